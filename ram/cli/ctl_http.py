"""HTTP access for ``ramctrl``: one client over several node APIs, failing over between them.

Any node answers reads from its own projection and forwards writes to the Raft leader, so the
operator may name several APIs and we just need *one* that answers. Failing over is safe for a
request that never reached a server (connect errors); a request that may have been processed is
only repeated when it is a read, so a write is never applied twice behind the operator's back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import click
import httpx

DEFAULT_API = "http://127.0.0.1:8008"
ENV_API = "RAM_API"
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 30.0
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2

Params = Mapping[str, str | int | Sequence[str]]


class CtlError(click.ClickException):
    """One-line failure (``Error: <message>`` on stderr) with exit code 1, never a traceback."""

    exit_code = EXIT_FAILED


class Unreachable(CtlError):
    """No API answered at all: exit code 2, so scripts can tell "down" from "refused"."""

    exit_code = EXIT_UNREACHABLE


class HttpError(CtlError):
    """An API answered with an error; ``status`` and ``body`` are kept for callers that care."""

    def __init__(self, message: str, status: int, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = dict(body or {})


def normalize_url(url: str) -> str:
    """``node1:8008`` -> ``http://node1:8008``: operators type addresses, httpx needs URLs."""
    url = url.strip().rstrip("/")
    if not url:
        raise CtlError("empty API URL")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise CtlError(f"API URL {url!r}: only http:// and https:// are supported")
    try:
        parsed = httpx.URL(url)
        _ = parsed.port  # a bad port is only noticed when read
    except (httpx.InvalidURL, ValueError) as exc:
        raise CtlError(f"API URL {url!r}: {exc}") from None
    if not parsed.host:
        raise CtlError(f"API URL {url!r}: no host")
    return url


def resolve_urls(given: Sequence[str]) -> list[str]:
    """``--api`` values (each may be comma-separated), else ``$RAM_API``, else the local default."""
    raw: list[str] = list(given)
    if not raw:
        raw = [os.environ.get(ENV_API, "")]
    urls = [normalize_url(part) for item in raw for part in item.split(",") if part.strip()]
    return list(dict.fromkeys(urls)) or [DEFAULT_API]


def _error_message(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """The API's one-line ``error`` when the body is its JSON error shape, else a short description."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return " ".join(body["error"].split()), body
    text = " ".join(response.text.split())[:200]
    return f"HTTP {response.status_code} from {response.request.url}" + (f": {text}" if text else ""), {}


def leader_api(body: Mapping[str, Any]) -> str | None:
    """The leader's API URL a 503 names (``leader_api``), when it is a usable http(s) URL."""
    value = body.get("leader_api")
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return normalize_url(value)
    except CtlError:
        return None


class ApiClient:
    """Tries each API URL in turn; remembers the one that answered for the rest of the command."""

    def __init__(self, urls: Sequence[str], *, connect_timeout: float = CONNECT_TIMEOUT_S,
                 read_timeout: float = READ_TIMEOUT_S, transport: httpx.BaseTransport | None = None) -> None:
        if not urls:
            raise CtlError("no API URL given")
        self.urls = list(urls)
        self.timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._http = httpx.Client(timeout=self.timeout, headers={"User-Agent": "ramctrl"}, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _prefer(self, url: str) -> None:
        if url in self.urls:
            self.urls.remove(url)
        self.urls.insert(0, url)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        ok: Sequence[int] = (),
    ) -> Any:
        """Send to the first API that answers and return its decoded JSON body.

        An error status raises :class:`HttpError` with the API's message, unless it is in ``ok``
        (health checks answer 503 with a body that *is* the answer). A 503 of a write (no leader
        or no quorum on that node) is tried once more: on the Raft leader's API when the answer
        names one (``leader_api``), else on the next URL.
        """
        response = self.send(method, path, params=params, json=json, ok=ok)
        try:
            return response.json()
        except ValueError:
            raise CtlError(f"{method} {response.request.url}: the answer is not JSON (is this a RAM API?)") from None

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        ok: Sequence[int] = (),
    ) -> httpx.Response:
        idempotent = method in ("GET", "HEAD")
        failures: list[str] = []
        refused: HttpError | None = None
        candidates = list(self.urls)
        position = 0
        while position < len(candidates):
            url = candidates[position]
            position += 1
            try:
                response = self._http.request(method, url + path, params=params, json=json)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failures.append(f"{url} ({_reason(exc)})")
                continue
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if idempotent:
                    failures.append(f"{url} ({_reason(exc)})")
                    continue
                raise CtlError(
                    f"{method} {url}{path}: {_reason(exc)}; the change may or may not have been applied "
                    "(check with 'ramctrl status' or 'ramctrl events')"
                ) from None
            except httpx.HTTPError as exc:
                raise CtlError(f"{method} {url}{path}: {_reason(exc)}") from None
            if response.status_code < 400 or response.status_code in ok:
                self._prefer(url)
                return response
            message, body = _error_message(response)
            error = HttpError(message, response.status_code, body)
            if response.status_code == 503 and refused is None:
                # This node can not commit now; one other node may. The leader it names comes first
                # (it may be an address the operator did not list), then the remaining URLs.
                leader = leader_api(body)
                if leader is not None and leader != url:
                    if leader in candidates[position:]:
                        candidates.remove(leader)
                    candidates.insert(position, leader)
                if position < len(candidates):
                    refused = error
                    continue
            raise error
        if refused is not None:
            raise refused
        raise Unreachable("no RAM API reachable; tried " + ", ".join(failures))

    @contextmanager
    def stream(
        self, path: str, *, params: Params | None = None, headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> Iterator[httpx.Response]:
        """A streaming GET on the first API that accepts the connection (server-sent events)."""
        failures: list[str] = []
        timeout = httpx.Timeout(read_timeout, connect=self.timeout.connect)
        for url in list(self.urls):
            try:
                opened = self._http.stream("GET", url + path, params=params, headers=headers, timeout=timeout)
                resp = opened.__enter__()
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failures.append(f"{url} ({_reason(exc)})")
                continue
            try:
                if resp.status_code >= 400:
                    resp.read()
                    message, body = _error_message(resp)
                    raise HttpError(message, resp.status_code, body)
                self._prefer(url)
                yield resp
                return
            finally:
                opened.__exit__(None, None, None)
        raise Unreachable("no RAM API reachable; tried " + ", ".join(failures))


def _reason(exc: httpx.HTTPError) -> str:
    text = " ".join(str(exc).split())
    kind = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout | httpx.ReadTimeout | httpx.PoolTimeout | httpx.WriteTimeout):
        return f"{kind}: no answer in time"
    return f"{kind}: {text}" if text else kind
