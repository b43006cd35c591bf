"""HTTP access for ``ramctrl``: one client over several node APIs, failing over between them.

Any node answers reads from its own projection and forwards writes to the Raft leader, so the
operator may name several APIs and we just need *one* that answers. Failing over is safe for a
request that never reached a server (connect errors); a request that may have been processed is
only repeated when it is a read, so a write is never applied twice behind the operator's back.

Credentials: the API token travels only in the ``Authorization: Bearer`` header, and comes from
``$RAM_TOKEN`` or a file (``--token-file`` / ``$RAM_TOKEN_FILE``), never from a command-line value
(``ps`` shows those to every user). HTTPS servers are verified against the system's CAs or the
cluster's own CA (``--cacert`` / ``$RAM_CACERT``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx

DEFAULT_API = "http://127.0.0.1:8008"
ENV_API = "RAM_API"
ENV_TOKEN = "RAM_TOKEN"
ENV_TOKEN_FILE = "RAM_TOKEN_FILE"
ENV_CACERT = "RAM_CACERT"
ENV_CLIENT_CERT = "RAM_CLIENT_CERT"
ENV_CLIENT_KEY = "RAM_CLIENT_KEY"
TOKEN_HELP = f"set {ENV_TOKEN} or {ENV_TOKEN_FILE} (or --token-file) to an API token"
CACERT_HELP = f"pass the cluster's CA certificate with --cacert or {ENV_CACERT}"
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


def normalize_url(url: str, scheme: str = "http") -> str:
    """``node1:8008`` -> ``http://node1:8008`` (``https://`` with ``scheme="https"``): operators type
    addresses, httpx needs URLs."""
    url = url.strip().rstrip("/")
    if not url:
        raise CtlError("empty API URL")
    if "://" not in url:
        url = f"{scheme}://" + url
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


def resolve_urls(given: Sequence[str], scheme: str = "http") -> list[str]:
    """``--api`` values (each may be comma-separated), else ``$RAM_API``, else the local default.
    Addresses without a scheme get ``scheme`` (https when a CA certificate was given)."""
    raw: list[str] = list(given)
    if not raw:
        raw = [os.environ.get(ENV_API, "")]
    urls = [normalize_url(part, scheme) for item in raw for part in item.split(",") if part.strip()]
    return list(dict.fromkeys(urls)) or [DEFAULT_API.replace("http://", f"{scheme}://")]


@dataclass(frozen=True)
class Credentials:
    """How ramctrl proves who it is and checks whom it talks to."""

    token: str | None = None
    #: Where the token came from, for messages (``$RAM_TOKEN``, ``token file /x``); never the token.
    token_source: str = ""
    verify: ssl.SSLContext | bool = True
    cacert: Path | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def resolve_credentials(
    token_file: Path | None = None,
    cacert: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Credentials:
    """The token (``--token-file``, else ``$RAM_TOKEN``, else ``$RAM_TOKEN_FILE``) and the TLS setup
    (``--cacert`` / ``$RAM_CACERT``; a client certificate for APIs that require one). A token file
    that group or others may read is refused, as ssh refuses such a key."""
    from ram.security import SecurityConfigError, read_token_file

    env = os.environ if environ is None else environ
    token: str | None = None
    source = ""
    try:
        if token_file is not None:
            token, source = read_token_file(token_file), f"token file {token_file}"
        elif env.get(ENV_TOKEN, "").strip():
            token, source = env[ENV_TOKEN].strip(), f"${ENV_TOKEN}"
        elif env.get(ENV_TOKEN_FILE, "").strip():
            path = Path(env[ENV_TOKEN_FILE].strip())
            token, source = read_token_file(path), f"token file {path} (${ENV_TOKEN_FILE})"
    except SecurityConfigError as exc:
        raise CtlError(str(exc)) from None
    if cacert is None and env.get(ENV_CACERT, "").strip():
        cacert = Path(env[ENV_CACERT].strip())
    client_cert = client_cert or (Path(env[ENV_CLIENT_CERT]) if env.get(ENV_CLIENT_CERT, "").strip() else None)
    client_key = client_key or (Path(env[ENV_CLIENT_KEY]) if env.get(ENV_CLIENT_KEY, "").strip() else None)
    verify: ssl.SSLContext | bool = True
    if cacert is not None or client_cert is not None:
        try:
            context = ssl.create_default_context(cafile=str(cacert) if cacert is not None else None)
            if client_cert is not None:
                context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        except FileNotFoundError as exc:
            raise CtlError(f"TLS file {exc.filename} does not exist") from None
        except (ssl.SSLError, OSError) as exc:
            what = cacert if client_cert is None else f"{cacert or ''} {client_cert}".strip()
            raise CtlError(f"can not load TLS files ({what}): {' '.join(str(exc).split())}") from None
        verify = context
    return Credentials(token=token, token_source=source, verify=verify, cacert=cacert)


def _error_message(response: httpx.Response, credentials: Credentials | None = None) -> tuple[str, dict[str, Any]]:
    """The API's one-line ``error`` when the body is its JSON error shape, else a short description.
    A 401 also says where a token comes from (or which one was refused), a 403 which token it was."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = " ".join(body["error"].split())
    else:
        text = " ".join(response.text.split())[:200]
        message, body = f"HTTP {response.status_code} from {response.request.url}" + (f": {text}" if text else ""), {}
    if response.status_code == 401:
        if credentials is None or not credentials.token:
            message = f"{_origin(response)} needs an API token (401); {TOKEN_HELP}"
        else:
            message = f"{message} (401): the token from {credentials.token_source} was refused by {_origin(response)}"
    elif response.status_code == 403 and credentials is not None and credentials.token:
        message = f"{message} (403; token from {credentials.token_source})"
    return message, body


def _origin(response: httpx.Response) -> str:
    url = response.request.url
    return f"{url.scheme}://{url.netloc.decode()}"


def leader_api(body: Mapping[str, Any], answered: str = "") -> str | None:
    """The leader's API URL a 503 names (``leader_api``), when it is a usable http(s) URL. When the
    node that answered was reached over HTTPS, so is the leader (a node may advertise plain http)."""
    value = body.get("leader_api")
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        url = normalize_url(value)
    except CtlError:
        return None
    if answered.startswith("https://") and url.startswith("http://"):
        url = "https://" + url.removeprefix("http://")
    return url


class ApiClient:
    """Tries each API URL in turn; remembers the one that answered for the rest of the command."""

    def __init__(self, urls: Sequence[str], *, connect_timeout: float = CONNECT_TIMEOUT_S,
                 read_timeout: float = READ_TIMEOUT_S, transport: httpx.BaseTransport | None = None,
                 credentials: Credentials | None = None) -> None:
        if not urls:
            raise CtlError("no API URL given")
        self.urls = list(urls)
        self.timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self.credentials = credentials or Credentials()
        # trust_env off: no .netrc or proxy variables decide where a token is sent.
        self._http = httpx.Client(
            timeout=self.timeout, headers={"User-Agent": "ramctrl", **self.credentials.headers()},
            transport=transport, verify=self.credentials.verify, trust_env=False,
        )

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
                failures.append(f"{url} ({self._reason(exc)})")
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
            message, body = _error_message(response, self.credentials)
            error = HttpError(message, response.status_code, body)
            if response.status_code == 503 and refused is None:
                # This node can not commit now; one other node may. The leader it names comes first
                # (it may be an address the operator did not list), then the remaining URLs.
                leader = leader_api(body, url)
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
        raise self._unreachable(failures)

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
                failures.append(f"{url} ({self._reason(exc)})")
                continue
            try:
                if resp.status_code >= 400:
                    resp.read()
                    message, body = _error_message(resp, self.credentials)
                    raise HttpError(message, resp.status_code, body)
                self._prefer(url)
                yield resp
                return
            finally:
                opened.__exit__(None, None, None)
        raise self._unreachable(failures)

    def _reason(self, exc: httpx.HTTPError) -> str:
        """Why a connection failed (a certificate that did not verify: just that, the hint comes once)."""
        text = _reason(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return "server certificate not verified: " + text.split("certificate verify failed:", 1)[-1].split(
                " (_ssl", 1)[0].strip()
        return text

    def _unreachable(self, failures: list[str]) -> Unreachable:
        message = "no RAM API reachable; tried " + ", ".join(failures)
        if any("server certificate not verified" in f for f in failures):
            message += "; " + (
                "is the CA given with --cacert / RAM_CACERT the one that signed the nodes' certificates?"
                if self.credentials.cacert else CACERT_HELP
            )
        return Unreachable(message)


def _reason(exc: httpx.HTTPError) -> str:
    text = " ".join(str(exc).split())
    kind = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout | httpx.ReadTimeout | httpx.PoolTimeout | httpx.WriteTimeout):
        return f"{kind}: no answer in time"
    return f"{kind}: {text}" if text else kind
