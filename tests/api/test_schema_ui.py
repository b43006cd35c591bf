"""The API docs work on a host without internet access: ``/schema`` loads nothing from another host."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

from tests.api.conftest import ApiCluster


class _Links(HTMLParser):
    """Every URL the page makes a browser fetch: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


async def test_schema_ui_is_served_from_the_node_itself(api_cluster: ApiCluster) -> None:
    base = api_cluster.url(0)
    async with httpx.AsyncClient(timeout=15) as http:
        for path in ("/schema", "/schema/swagger"):
            page = await http.get(base + path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
            html = page.text
            assert "SwaggerUIBundle" in html
            links = _Links()
            links.feed(html)
            assets = links.urls
            assert any(u.endswith("swagger-ui-bundle.js") for u in assets), assets
            assert any(u.endswith("swagger-ui.css") for u in assets), assets
            # No http(s) URL in the page outside the embedded OpenAPI document, whose descriptions only name
            # placeholders such as `http://host:port` (no real, dotted host name).
            spec_start, spec_end = html.index("spec: "), html.index("dom_id:")
            outside = html[:spec_start] + html[spec_end:]
            assert re.findall(r"https?://", outside) == [], outside
            hosts = {urlsplit(u).hostname for u in re.findall(r"https?://[^\s\"'<>)`]+", html)}
            assert all(h and "." not in h for h in hosts), hosts
            for url in assets:
                absolute = urljoin(base + path, url)
                assert urlsplit(absolute).netloc == urlsplit(base).netloc, url
                reply = await http.get(absolute)
                assert reply.status_code == 200 and reply.content, (url, reply.status_code)
        script = await http.get(base + "/schema/assets/swagger-ui-bundle.js")
        assert "javascript" in script.headers["content-type"] and len(script.content) > 100_000
        # The OpenAPI document the README points to.
        doc = await http.get(base + "/schema/openapi.json")
        assert doc.status_code == 200 and doc.json()["openapi"].startswith("3.")
        assert "/events" in doc.json()["paths"]
        assert "/schema/assets/{file_path:path}" not in doc.json()["paths"]
