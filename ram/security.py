"""API credentials: bearer tokens with roles, where they come from, and files that hold secrets.

Kept free of the web framework so that ``ram node run`` can check a node's token file (and TLS
files) right after reading its configuration, before Raft or PostgreSQL start: a node that would
refuse every request should not join its cluster first and fail later.

Tokens are never kept in memory in the clear: each is reduced to its SHA-256 digest when loaded
(a token file may hold only the digest, ``sha256 = "<hex>"``), and a presented token is hashed and
compared with every known digest with :func:`hmac.compare_digest`, so neither the comparison time
nor an early exit tells which bytes or which token matched.

Token file (``api.tokens_file``; TOML, or JSON/YAML by suffix), mode 0600 or stricter::

    [tokens.ops]                  # the name is what events record: requested_by = "token:ops"
    role = "admin"                # admin: everything; read: GET/HEAD only
    sha256 = "9f86d081884c7d65..."  # hex SHA-256 of the token (or: token = "<the token itself>")

Environment of ``ram node run`` (added to the file's tokens): ``RAM_ADMIN_TOKEN`` (name
``env-admin``) and ``RAM_READ_TOKEN`` (name ``env-read``). A changed token file is read again while
the node runs (:meth:`TokenSet.refresh`), so tokens rotate without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import stat
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ram.tomltext import toml_key, toml_line

log = logging.getLogger("ram.api.auth")

Role = Literal["read", "admin"]
ROLES: tuple[Role, ...] = ("read", "admin")
#: Environment variables of ``ram node run`` that add a token (name, role).
ENV_TOKENS: dict[str, tuple[str, Role]] = {
    "RAM_ADMIN_TOKEN": ("env-admin", "admin"),
    "RAM_READ_TOKEN": ("env-read", "read"),
}
#: Shorter tokens are refused: a token is a password that nobody types, so there is no reason
#: for a guessable one (``ram cluster up`` makes 43-character ones).
MIN_TOKEN_LENGTH = 16
#: How often a node looks whether its tokens file changed (a stat, on a request that presents a token).
RELOAD_CHECK_S = 1.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class SecurityConfigError(ValueError):
    """A token file, token or TLS file that can not be used; the message is one line naming the file
    (never a secret) and, when there is one, the fix."""


@dataclass(frozen=True)
class Token:
    """A known token: who it is (``name``), what it may do (``role``), and its SHA-256 digest."""

    name: str
    role: Role
    digest: bytes = field(repr=False)


@dataclass(frozen=True)
class Identity:
    """Who sent a request, as authenticated by its token."""

    name: str
    role: Role

    @property
    def label(self) -> str:
        """What events record as ``requested_by`` / ``by``."""
        return f"token:{self.name}"

    def may(self, needed: Role) -> bool:
        return self.role == "admin" or needed == "read"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token``: what a token file may hold instead of the token itself."""
    return digest(token).hex()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


class TokenSet:
    """The tokens a node accepts; :meth:`identify` answers who a presented token belongs to.

    With ``path`` (the tokens file), a changed file is read again (checked at most every
    ``RELOAD_CHECK_S``), so tokens are added, rotated or revoked without restarting the node; a file
    that can not be used then (bad permissions, a typo) is logged and the tokens in force stay.
    ``extra`` (from the environment) are kept across reloads."""

    def __init__(self, tokens: Iterable[Token] = (), *, path: Path | None = None, extra: Iterable[Token] = ()) -> None:
        self.tokens: tuple[Token, ...] = tuple(tokens)
        self.path = path
        self._extra = tuple(extra)
        self._signature = self._stat()
        self._checked = time.monotonic()

    def __len__(self) -> int:
        return len(self.tokens)

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def refresh(self, *, force: bool = False) -> None:
        """Read the tokens file again if it changed since it was last read."""
        now = time.monotonic()
        if self.path is None or (not force and now - self._checked < RELOAD_CHECK_S):
            return
        self._checked = now
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            tokens = [*load_tokens_file(self.path), *self._extra]
            if len({t.name for t in tokens}) != len(tokens):
                raise SecurityConfigError("the same token name comes from the tokens file and the environment")
        except SecurityConfigError as exc:
            log.warning("api tokens file not reloaded, the tokens in force stay: %s", exc)
            return
        self.tokens = tuple(tokens)
        log.info("api tokens file reloaded path=%s tokens=%s", self.path, ",".join(t.name for t in self.tokens))

    def identify(self, presented: str) -> Identity | None:
        """The identity of ``presented``, or None. Every known digest is compared (in constant time),
        whether or not an earlier one matched."""
        self.refresh()
        candidate = digest(presented)
        found: Token | None = None
        for token in self.tokens:
            if hmac.compare_digest(candidate, token.digest) and found is None:
                found = token
        return None if found is None else Identity(found.name, found.role)


# ------------------------------------------------------------------------------ secret files


def check_private(path: Path, what: str) -> None:
    """Refuse a secret file that group or others may read or write (one line: the file and the fix)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SecurityConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise SecurityConfigError(f"{what} {path} can not be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecurityConfigError(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SecurityConfigError(
            f"{what} {path} is accessible by group or others (mode {mode:04o}); it holds secrets: "
            f"run 'chmod 600 {path}'"
        )


def write_private(path: Path, text: str, *, overwrite: bool = False) -> Path:
    """Write a secret file created with mode 0600 from the start (never written first, then chmod-ed:
    between the two, another user could open it). Refuses to replace an existing file unless
    ``overwrite``; an overwritten file is replaced atomically by a new 0600 file."""
    target = path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if overwrite:
        target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(target, flags, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            fd = -1
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        if fd >= 0:
            os.close(fd)
        target.unlink(missing_ok=True)
        raise
    if overwrite:
        os.replace(target, path)
    return path


def read_token_file(path: Path) -> str:
    """A client's token file (``ramctrl --token-file``): its first non-empty line is the token."""
    check_private(path, "token file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityConfigError(f"token file {path} can not be read: {exc}") from None
    token = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not token:
        raise SecurityConfigError(f"token file {path} is empty")
    return token


# ------------------------------------------------------------------------------ token sources


def _parse_document(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return tomllib.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        # The parser's message may quote the line, and the line may hold a token: name the place only.
        where = getattr(exc, "lineno", None) or getattr(getattr(exc, "problem_mark", None), "line", None)
        kind = "JSON" if suffix == ".json" else "YAML" if suffix in (".yaml", ".yml") else "TOML"
        raise SecurityConfigError(
            f"tokens file {path}: not valid {kind}" + (f" (near line {where})" if where else "")
        ) from None


def parse_tokens(doc: Any, source: str) -> list[Token]:
    """``{"tokens": {name: {"role": ..., "token" | "sha256": ...}}}`` -> tokens (errors name the key)."""
    if not isinstance(doc, Mapping) or set(doc) - {"tokens"} or not isinstance(doc.get("tokens"), Mapping):
        raise SecurityConfigError(f"{source}: expected a 'tokens' table of NAME = {{ role, token or sha256 }}")
    out: list[Token] = []
    for name, entry in doc["tokens"].items():
        where = f"{source}: tokens.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise SecurityConfigError(f"{source}: token name {str(name)[:40]!r}: letters, digits, _ . @ - only")
        if not isinstance(entry, Mapping):
            raise SecurityConfigError(f"{where}: expected a table with role and token or sha256")
        unknown = sorted(set(entry) - {"role", "token", "sha256"})
        if unknown:
            raise SecurityConfigError(f"{where}: unknown key {unknown[0]!r} (known: role, token, sha256)")
        role = entry.get("role")
        if role not in ROLES:
            raise SecurityConfigError(f"{where}: role must be one of {', '.join(ROLES)}")
        has_token, has_hash = "token" in entry, "sha256" in entry
        if has_token == has_hash:
            raise SecurityConfigError(f"{where}: give exactly one of token and sha256")
        if has_token:
            value = entry["token"]
            if not isinstance(value, str) or len(value) < MIN_TOKEN_LENGTH:
                raise SecurityConfigError(f"{where}: token must be a string of at least {MIN_TOKEN_LENGTH} characters")
            out.append(Token(name, role, digest(value)))
        else:
            value = entry["sha256"]
            if not isinstance(value, str) or not _HEX64.match(value):
                raise SecurityConfigError(f"{where}: sha256 must be 64 hex digits (the SHA-256 of the token)")
            out.append(Token(name, role, bytes.fromhex(value)))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise SecurityConfigError(f"{source}: duplicate token names")
    return out


def load_tokens_file(path: Path) -> list[Token]:
    """The tokens of ``path``; refused when group or others may access it."""
    check_private(path, "tokens file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityConfigError(f"tokens file {path} can not be read: {exc}") from None
    return parse_tokens(_parse_document(path, text), f"tokens file {path}")


def tokens_from_env(environ: Mapping[str, str]) -> list[Token]:
    out = []
    for variable, (name, role) in ENV_TOKENS.items():
        value = environ.get(variable, "").strip()
        if not value:
            continue
        if len(value) < MIN_TOKEN_LENGTH:
            raise SecurityConfigError(f"{variable}: a token must be at least {MIN_TOKEN_LENGTH} characters")
        out.append(Token(name, role, digest(value)))
    return out


def tokens_file_text(tokens: Mapping[str, tuple[Role, str]]) -> str:
    """A token file for ``{name: (role, token)}`` holding only the digests (a node needs no more)."""
    lines = [
        "# RAM API tokens: name -> role and the SHA-256 of the token (the tokens themselves are not here).",
        "# Keep this file mode 0600. Add one: python -c \"import hashlib,sys; "
        "print(hashlib.sha256(sys.argv[1].encode()).hexdigest())\" TOKEN",
    ]
    for name, (role, token) in tokens.items():
        if not _NAME.match(name) or role not in ROLES:
            raise ValueError(f"bad token entry {name!r}")
        lines += ["", f"[tokens.{toml_key(name)}]", toml_line("role", role), toml_line("sha256", hash_token(token))]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class TlsFiles:
    """The API's certificate and key, and the CA that client certificates must be signed by."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class ApiSecurity:
    """Everything the API enforces, resolved from ``[api]`` and the environment (see docs/security.md).

    ``enabled`` False is ``api.auth = "none"``: no token is asked for anywhere (the allow-lists still
    apply). With ``enabled`` and no token known, every request that needs a token is refused.
    """

    enabled: bool = True
    tokens: TokenSet = field(default_factory=TokenSet)
    auth_reads: bool = True
    auth_health: bool = False
    allowed_hosts: tuple[str, ...] = ()
    # ip_network() values; typed loosely because Litestar's dependency checks (msgspec) can not
    # handle a union of two classes inside the context object that carries this.
    allowed_clients: tuple[Any, ...] = ()
    tls: TlsFiles | None = None
    max_event_streams: int = 200

    @classmethod
    def open(cls, **kwargs: Any) -> ApiSecurity:
        """No authentication (``api.auth = "none"``), for tests and explicitly open nodes."""
        return cls(enabled=False, **kwargs)

    @classmethod
    def with_tokens(cls, tokens: Mapping[str, tuple[Role, str]], **kwargs: Any) -> ApiSecurity:
        """Authentication with the given ``{name: (role, token)}`` (tests, embedding)."""
        return cls(tokens=TokenSet(Token(n, r, digest(t)) for n, (r, t) in tokens.items()), **kwargs)

    @classmethod
    def from_settings(cls, api: Any, environ: Mapping[str, str] | None = None) -> ApiSecurity:
        """From a node's ``ApiSettings``; raises :class:`SecurityConfigError` (one line) for a file or
        token that can not be used, so ``ram node run`` refuses to start instead of starting open."""
        env = os.environ if environ is None else environ
        enabled = getattr(api, "auth", "token") != "none"
        tokens: list[Token] = []
        tokens_file = getattr(api, "tokens_file", None)
        if tokens_file is not None:
            tokens += load_tokens_file(Path(tokens_file))
        from_env = tokens_from_env(env)
        tokens += from_env
        names = [t.name for t in tokens]
        if len(set(names)) != len(names):
            raise SecurityConfigError("the same token name comes from the tokens file and the environment")
        tls = None
        cert, key = getattr(api, "tls_cert", None), getattr(api, "tls_key", None)
        if cert is not None or key is not None:
            if cert is None or key is None:
                raise SecurityConfigError("api.tls_cert and api.tls_key go together: set both or neither")
            client_ca = getattr(api, "tls_client_ca", None)
            for what, path in (("api.tls_cert", cert), ("api.tls_client_ca", client_ca)):
                if path is not None and not Path(path).is_file():
                    raise SecurityConfigError(f"{what} {path} does not exist")
            check_private(Path(key), "api.tls_key")
            tls = TlsFiles(Path(cert), Path(key), None if client_ca is None else Path(client_ca))
        elif getattr(api, "tls_client_ca", None) is not None:
            raise SecurityConfigError("api.tls_client_ca needs api.tls_cert and api.tls_key (HTTPS)")
        return cls(
            enabled=enabled,
            tokens=TokenSet(tokens, path=None if tokens_file is None else Path(tokens_file), extra=from_env),
            auth_reads=bool(getattr(api, "auth_reads", True)),
            auth_health=bool(getattr(api, "auth_health", False)),
            allowed_hosts=tuple(h.lower() for h in getattr(api, "allowed_hosts", ()) or ()),
            allowed_clients=tuple(
                ipaddress.ip_network(c, strict=False) for c in getattr(api, "allowed_clients", ()) or ()
            ),
            tls=tls,
            max_event_streams=int(getattr(api, "max_event_streams", 200)),
        )

    def client_allowed(self, host: str | None) -> bool:
        if not self.allowed_clients:
            return True
        if not host:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed_clients)

    def host_allowed(self, host_header: str | None) -> bool:
        """The Host header (``name`` or ``name:port``) against ``allowed_hosts`` (entries with or
        without a port; a bare name allows any port)."""
        if not self.allowed_hosts:
            return True
        if not host_header:
            return False
        value = host_header.strip().lower()
        if value in self.allowed_hosts:
            return True
        if value.startswith("["):
            name = value[: value.find("]") + 1] if "]" in value else value
        else:
            name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
        return name in self.allowed_hosts or name.strip("[]") in self.allowed_hosts
