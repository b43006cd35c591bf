"""README.md and docs/ link only to files of this repository that exist (and to headings they have).

A link out of the repository (another checkout's file, a web page) breaks for whoever reads a copy of
the repository alone, and a link to a renamed file breaks silently: both fail here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_INLINE = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")


def links(text: str) -> list[str]:
    """Link targets of a Markdown text, outside code blocks and code spans."""
    prose = _CODE.sub("", _FENCE.sub("", text))
    return _INLINE.findall(prose) + _REFERENCE.findall(prose)


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def problems(text: str, base: Path) -> list[str]:
    """What is wrong with the links of ``text``, a document in directory ``base``."""
    found = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("//"):
            found.append(f"{target}: outside the repository")
            continue
        path_part, _, anchor = target.partition("#")
        path = (base / path_part).resolve() if path_part else None
        if path is not None and not path.is_relative_to(REPO):
            found.append(f"{target}: outside the repository")
        elif path is not None and not path.exists():
            found.append(f"{target}: no such file")
        elif anchor and (path is None or path.suffix == ".md"):
            headings = anchors(text if path is None else path.read_text())
            if anchor not in headings:
                found.append(f"{target}: no such heading")
    return found


def test_the_checker_catches_bad_links() -> None:
    text = (
        "See [design](../shared/DESIGN.md), [web](https://example.org/x), [ok](docs/safety.md), "
        "[gone](docs/nope.md), [anchor](docs/operations.md#no-such-heading), [here](#tour).\n\n"
        "[ref]: ../../etc/passwd\n`[not a link](../x.md)`\n\n## Tour\n"
    )
    assert links(text) == ["../shared/DESIGN.md", "https://example.org/x", "docs/safety.md", "docs/nope.md",
                           "docs/operations.md#no-such-heading", "#tour", "../../etc/passwd"]
    assert problems(text, REPO) == [
        "../shared/DESIGN.md: outside the repository", "https://example.org/x: outside the repository",
        "docs/nope.md: no such file", "docs/operations.md#no-such-heading: no such heading",
        "../../etc/passwd: outside the repository",
    ]
    assert "the-store-schema-pgraft" in anchors("## The store: schema `pgraft`\n")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_in_the_repository_and_resolve(doc: Path) -> None:
    assert problems(doc.read_text(), doc.parent) == []


def test_the_docs_exist_and_the_readme_points_to_them() -> None:
    names = {p.name for p in DOCS}
    assert {"architecture.md", "safety.md", "operations.md"} <= names
    readme_links = links((REPO / "README.md").read_text())
    for name in ("docs/architecture.md", "docs/safety.md", "docs/operations.md"):
        assert name in readme_links
    assert "/schema/openapi.json" in (REPO / "README.md").read_text()
