"""API credentials without a cluster: token files and their permissions, environment tokens, how
tokens are compared, secret files created private, certificates, ``ram node run`` refusing an
unusable token file at start, and the event hub dropping a slow subscriber."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509

from ram.api.streams import EventHub, TooManyStreams
from ram.config import parse_config
from ram.security import (
    ApiSecurity,
    Identity,
    SecurityConfigError,
    TokenSet,
    hash_token,
    load_tokens_file,
    new_token,
    read_token_file,
    tokens_file_text,
    write_private,
)
from ram.tls import make_ca, make_cert

REPO = Path(__file__).resolve().parents[2]
TOKEN = "a-token-of-sufficient-length-123"


def _private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_token_file_with_plain_tokens_and_digests(tmp_path: Path) -> None:
    other = new_token()
    path = _private(tmp_path / "tokens.toml", f"""
[tokens.ops]
role = "admin"
token = "{TOKEN}"

[tokens.grafana]
role = "read"
sha256 = "{hash_token(other)}"
""")
    tokens = TokenSet(load_tokens_file(path))
    assert tokens.identify(TOKEN) == Identity("ops", "admin")
    identity = tokens.identify(other)
    assert identity is not None and identity.name == "grafana" and identity.label == "token:grafana"
    assert identity.may("read") and not identity.may("admin")
    assert tokens.identify(TOKEN[:-1]) is None and tokens.identify("") is None


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_token_file_in_json_and_yaml(tmp_path: Path, suffix: str) -> None:
    doc = {"tokens": {"ops": {"role": "admin", "token": TOKEN}}}
    text = json.dumps(doc)  # JSON is YAML too
    tokens = TokenSet(load_tokens_file(_private(tmp_path / f"tokens{suffix}", text)))
    assert tokens.identify(TOKEN) is not None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_token_file_others_may_read_is_refused_naming_the_fix(tmp_path: Path, mode: int) -> None:
    path = _private(tmp_path / "tokens.toml", f'[tokens.ops]\nrole = "admin"\ntoken = "{TOKEN}"\n')
    path.chmod(mode)
    with pytest.raises(SecurityConfigError) as err:
        load_tokens_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and f"chmod 600 {path}" in message and TOKEN not in message


@pytest.mark.parametrize(("text", "needle"), [
    ('[tokens.ops]\nrole = "root"\ntoken = "' + TOKEN + '"\n', "role must be one of read, admin"),
    ('[tokens.ops]\nrole = "admin"\ntoken = "short"\n', "at least 16 characters"),
    ('[tokens.ops]\nrole = "admin"\n', "exactly one of token and sha256"),
    ('[tokens.ops]\nrole = "admin"\nsha256 = "abc"\n', "64 hex digits"),
    ('[tokens.ops]\nrole = "admin"\ntoken = "' + TOKEN + '"\nextra = 1\n', "unknown key 'extra'"),
    ('[other]\nx = 1\n', "expected a 'tokens' table"),
    ('tokens = [\n"' + TOKEN + '"', "not valid TOML"),
])
def test_token_file_mistakes_are_one_line_naming_the_key_never_the_token(tmp_path: Path, text: str,
                                                                           needle: str) -> None:
    path = _private(tmp_path / "tokens.toml", text)
    with pytest.raises(SecurityConfigError) as err:
        load_tokens_file(path)
    message = str(err.value)
    assert needle in message and "\n" not in message and TOKEN not in message and str(path) in message


def test_a_changed_tokens_file_is_read_again_without_a_restart(tmp_path: Path) -> None:
    """Rotation: a new token works and a removed one stops working once the file changed; a broken
    file (here: others may read it) leaves the tokens in force, and env tokens stay throughout."""
    path = write_private(tmp_path / "tokens.toml", f'[tokens.ops]\nrole = "admin"\ntoken = "{TOKEN}"\n')
    security = ApiSecurity.from_settings(SimpleNamespace(tokens_file=path), {"RAM_READ_TOKEN": "r" * 20})
    tokens = security.tokens
    assert tokens.identify(TOKEN) is not None and tokens.identify("r" * 20) is not None
    rotated = new_token()
    write_private(path, tokens_file_text({"ops2": ("admin", rotated)}), overwrite=True)
    tokens.refresh(force=True)
    assert tokens.identify(TOKEN) is None and tokens.identify(rotated) == Identity("ops2", "admin")
    assert tokens.identify("r" * 20) == Identity("env-read", "read")
    write_private(path, f'[tokens.ops]\nrole = "admin"\ntoken = "{TOKEN}"\n', overwrite=True)
    path.chmod(0o644)
    tokens.refresh(force=True)
    assert tokens.identify(rotated) is not None and tokens.identify(TOKEN) is None


def test_environment_tokens() -> None:
    security = ApiSecurity.from_settings(SimpleNamespace(), {"RAM_ADMIN_TOKEN": TOKEN, "RAM_READ_TOKEN": "r" * 20})
    assert security.enabled and len(security.tokens) == 2
    assert security.tokens.identify(TOKEN).name == "env-admin"  # type: ignore[union-attr]
    assert security.tokens.identify("r" * 20).role == "read"  # type: ignore[union-attr]
    with pytest.raises(SecurityConfigError, match="RAM_ADMIN_TOKEN: a token must be at least 16"):
        ApiSecurity.from_settings(SimpleNamespace(), {"RAM_ADMIN_TOKEN": "short"})


def test_every_digest_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    named = {f"t{i}": ("read", f"token-number-{i:04d}-xxxx") for i in range(5)}
    tokens = ApiSecurity.with_tokens(named).tokens  # type: ignore[arg-type]
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert tokens.identify("token-number-0000-xxxx") is not None  # the first matches; all are still compared
    assert len(calls) == 5 and all(len(a) == len(b) == 32 for a, b in calls)


def test_the_node_tokens_file_holds_digests_only(tmp_path: Path) -> None:
    admin, read = new_token(), new_token()
    text = tokens_file_text({"admin": ("admin", admin), "read": ("read", read)})
    assert admin not in text and read not in text and hash_token(admin) in text
    path = write_private(tmp_path / "api-tokens.toml", text)
    tokens = TokenSet(load_tokens_file(path))
    assert tokens.identify(admin).role == "admin" and tokens.identify(read).role == "read"  # type: ignore[union-attr]


def test_secret_files_are_private_from_creation(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        path = write_private(tmp_path / "secret", "s3cret\n")
        assert path.stat().st_mode & 0o777 == 0o600
        with pytest.raises(FileExistsError):
            write_private(path, "again")
        path.chmod(0o644)
        write_private(path, "replaced\n", overwrite=True)  # a new file: the old mode does not carry over
        assert path.stat().st_mode & 0o777 == 0o600 and path.read_text() == "replaced\n"
        ca = make_ca(tmp_path / "pki")
        cert = make_cert(ca, "pg1", ["127.0.0.11", "db1.example"], tmp_path / "pki")
        assert ca.files.key.stat().st_mode & 0o777 == 0o600 and cert.key.stat().st_mode & 0o777 == 0o600
        assert cert.cert.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    loaded = x509.load_pem_x509_certificate(cert.cert.read_bytes())
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.11"]
    assert san.get_values_for_type(x509.DNSName) == ["db1.example"]
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    context.load_cert_chain(str(cert.cert), str(cert.key))  # the key matches the certificate
    assert read_token_file(write_private(tmp_path / "t", "\n  tok-tok-tok-tok-tok \n")) == "tok-tok-tok-tok-tok"


def test_config_keys_are_validated() -> None:
    base: dict[str, Any] = {"cluster_id": "c", "node_id": 1, "name": "n1", "data_dir": "/tmp/x",
                            "raft": {"listen": "127.0.0.1:7400"}}
    config = parse_config({**base, "api": {"allowed_clients": ["10.0.0.0/8", "::1"], "max_event_streams": 5}})
    assert config.api.auth == "token" and config.api.auth_reads and not config.api.auth_health
    for api, needle in (({"auth": "maybe"}, "api.auth"), ({"allowed_clients": ["10.0.0.300/8"]}, "not an address"),
                        ({"tls_cert": "/x.crt"}, "tls_cert and tls_key go together"),
                        ({"tls_client_ca": "/ca.crt"}, "tls_client_ca needs")):
        with pytest.raises(ValueError, match=needle):
            parse_config({**base, "api": api})


def test_ram_node_run_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    """At start, before Raft or a store: one line naming the file and the fix, exit 1, no traceback."""
    tokens = _private(tmp_path / "tokens.toml", f'[tokens.ops]\nrole = "admin"\ntoken = "{TOKEN}"\n')
    tokens.chmod(0o644)
    config = _private(tmp_path / "node.toml", f"""
cluster_id = "c"
node_id = 1
name = "n1"
data_dir = "{tmp_path / 'data'}"
bootstrap = true
[raft]
listen = "127.0.0.1:1"
[store]
dsn = "postgresql://nobody@127.0.0.1:1/none"
[api]
tokens_file = "{tokens}"
""")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAM_ADMIN_TOKEN", None)
    result = subprocess.run([sys.executable, "-m", "ram.cli.ram_cmd", "node", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    assert str(tokens) in lines[0] and f"chmod 600 {tokens}" in lines[0], lines[0]
    assert not (tmp_path / "data").exists()  # nothing was started


def _event(position: int, type_name: str = "dynamic_config_changed") -> Any:
    return SimpleNamespace(position=position, sub=0, event=SimpleNamespace(type=type_name))


async def test_a_slow_subscriber_is_dropped_not_buffered() -> None:
    hub = EventHub("postgresql://unused", pool=None, max_streams=2, queue_size=3)  # type: ignore[arg-type]
    hub._task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]  # no store here
    slow = hub.subscribe(0, ["dynamic_config_changed"])
    other = hub.subscribe(0)
    with pytest.raises(TooManyStreams, match=r"api\.max_event_streams"):
        hub.subscribe(0)
    for position in range(1, 4):
        slow.offer(_event(position))
        other.offer(_event(position, "maintenance_mode_changed"))
    assert not slow.overflowed and slow.queue.qsize() == 3
    assert other.queue.qsize() == 3
    slow.offer(_event(4))  # one more than its queue holds: dropped, its place given back
    assert slow.overflowed and slow not in hub.subscribers and len(hub) == 1
    slow.offer(_event(5, "maintenance_mode_changed"))  # filtered: never queued
    assert hub.subscribe(0) is not None  # the place is free again
    hub._task.cancel()  # type: ignore[union-attr]
