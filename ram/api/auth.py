"""Who may call what: the API's access middleware (allow-lists, bearer tokens and roles, JSON-only writes).

Every routed request passes, in this order:

1. ``api.allowed_clients``: the peer address must be in one of the CIDRs (403 otherwise);
2. ``api.allowed_hosts``: the ``Host`` header must be listed (400 otherwise; against DNS rebinding);
3. the token: ``Authorization: Bearer <token>``, looked up among the node's tokens
   (:class:`ram.security.TokenSet`, constant-time digest comparison). Writes (POST, PUT, PATCH,
   DELETE) need the ``admin`` role, reads a ``read`` or ``admin`` token unless ``api.auth_reads`` is
   off, the load-balancer health checks none unless ``api.auth_health`` is on. The API docs
   (``/schema``) are always open: they describe the API, not the cluster. 401 when the token is
   missing or unknown, 403 when its role is not enough;
4. writes: a body must be ``application/json`` (415 otherwise). Together with the token travelling in
   a header only (no cookies), a web page can not make a browser send a write (no CSRF): a browser
   sends a cross-site request with a custom header or a JSON body only after a CORS preflight, which
   this API never grants.

The identity is put in the ASGI scope (``scope["user"]``, a :class:`ram.security.Identity`) so that
handlers record who asked (``requested_by = "token:<name>"``). Error answers are the API's usual
``{"error", "status"}`` and say only what the caller needs to fix its own request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from ram.api.errors import ApiError
from ram.security import ApiSecurity, Identity, Role

log = logging.getLogger("ram.api.auth")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_MEDIA_TYPES = frozenset({"application/json"})
BEARER = "bearer"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ram"'}

MISSING = "authentication required: send the header 'Authorization: Bearer <token>'"
#: A refusal is logged at most this often per (kind, client address): a client guessing tokens (or a
#: misconfigured monitor) must not be able to flood the node's log.
REFUSAL_LOG_INTERVAL_S = 10.0
_MAX_TRACKED = 10_000
INVALID = "authentication failed: the token is not valid"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def identity_of(scope: Scope | Any) -> Identity | None:
    """The authenticated identity of a request (a Litestar ``Request`` or its ASGI scope)."""
    scope = getattr(scope, "scope", scope)
    user = scope.get("user") if isinstance(scope, dict) else None
    return user if isinstance(user, Identity) else None


class AccessPolicy:
    """Decides one request; see the module docstring for the order of the checks."""

    def __init__(self, security: ApiSecurity, open_paths: Iterable[str], open_prefixes: Iterable[str] = ()) -> None:
        self.security = security
        self.health_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)
        self._logged: dict[tuple[str, str | None], tuple[float, int]] = {}

    def _log_refusal(self, kind: str, peer: str | None, detail: str) -> None:
        """A warning per (kind, client) at most every REFUSAL_LOG_INTERVAL_S, with how many were not
        logged since; never the token itself."""
        now = time.monotonic()
        key = (kind, peer)
        last, skipped = self._logged.get(key, (-REFUSAL_LOG_INTERVAL_S, 0))
        if now - last < REFUSAL_LOG_INTERVAL_S:
            self._logged[key] = (last, skipped + 1)
            return
        if len(self._logged) >= _MAX_TRACKED:
            self._logged.clear()
        self._logged[key] = (now, 0)
        more = f" (+{skipped} more since the last such line)" if skipped else ""
        log.warning("api refused: %s client=%s %s%s", kind, peer, detail, more)

    def needed(self, method: str, path: str) -> Role | None:
        """The role a request needs; None: no token needed."""
        if not self.security.enabled:
            return None
        if method in WRITE_METHODS:
            return "admin"
        if path == "/schema" or path.startswith(self.open_prefixes):
            return None
        if path in self.health_paths:
            return "read" if self.security.auth_health else None
        return "read" if self.security.auth_reads else None

    def check(self, scope: Scope) -> Identity | None:
        """Raise :class:`ApiError` for a refused request; the identity when a token was checked."""
        method = str(scope.get("method", "GET")).upper()
        path = str(scope.get("path", ""))
        client = scope.get("client")
        peer = client[0] if client else None
        security = self.security
        if not security.client_allowed(peer):
            self._log_refusal("client address not allowed", peer, f"method={method} path={path}")
            raise ApiError(403, "forbidden: this client address is not allowed (api.allowed_clients)")
        if not security.host_allowed(_header(scope, b"host")):
            raise ApiError(400, "the Host header of this request is not allowed (api.allowed_hosts)")
        needed = self.needed(method, path)
        identity: Identity | None = None
        if needed is not None:
            identity = self._authenticate(scope, method, path, peer)
            if not identity.may(needed):
                self._log_refusal("role too low", peer, f"token={identity.name} method={method} path={path}")
                raise ApiError(403, f"forbidden: {method} {path} needs a token with the {needed} role")
        if method in WRITE_METHODS:
            self._check_body_type(scope)
        return identity

    def _authenticate(self, scope: Scope, method: str, path: str, peer: str | None) -> Identity:
        header = _header(scope, b"authorization")
        if header is None:
            raise ApiError(401, MISSING, headers=CHALLENGE)
        scheme, _, presented = header.strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != BEARER or not presented:
            raise ApiError(401, MISSING, headers=CHALLENGE)
        identity = self.security.tokens.identify(presented)
        if identity is None:
            self._log_refusal("invalid token", peer, f"method={method} path={path}")
            raise ApiError(401, INVALID, headers=CHALLENGE)
        return identity

    @staticmethod
    def _check_body_type(scope: Scope) -> None:
        content_type = _header(scope, b"content-type")
        if content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media not in JSON_MEDIA_TYPES:
                raise ApiError(415, f"unsupported content type {media[:60]!r}: send the body as application/json")
            return
        length = _header(scope, b"content-length")
        chunked = _header(scope, b"transfer-encoding")
        if chunked is not None or (length is not None and length.strip() not in ("", "0")):
            raise ApiError(415, "a request body needs 'Content-Type: application/json'")


def access_middleware(policy: AccessPolicy) -> Any:
    """The ASGI middleware factory Litestar calls once per route (``middleware=[...]``)."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == ScopeType.HTTP:
                identity = policy.check(scope)
                if identity is not None:
                    scope["user"] = identity
                    scope["auth"] = identity.role
            await app(scope, receive, send)

        return guarded

    return wrap
