"""ramctrl's pure parts (no server): parsing, rendering, DSNs, and every command's --help."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner

from ram.cli.ctl_actions import parse_at
from ram.cli.ctl_config_parse import config_patch, dump_document, parse_assignments, parse_document, parse_value
from ram.cli.ctl_dsn import build_dsns
from ram.cli.ctl_events import parse_sse
from ram.cli.ctl_http import CtlError, resolve_urls
from ram.cli.ctl_members import split_address
from ram.cli.ctl_status import render_status
from ram.cli.ctl_table import format_lsn, human_bytes, render_table, summarize
from ram.cli.ramctrl import cli


def _all_commands() -> list[list[str]]:
    out: list[list[str]] = [[]]

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name, command in group.commands.items():
            out.append([*prefix, name])
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])

    walk(cli, [])
    return out


@pytest.mark.parametrize("path", _all_commands(), ids=lambda p: " ".join(p) or "ramctrl")
def test_help_has_an_example(path: list[str]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "ramctrl" in result.output.split("Example", 1)[1]


def test_every_issue_command_exists() -> None:
    names = {" ".join(p) for p in _all_commands()}
    assert names >= {
        "status", "health", "events", "history", "switchover", "failover", "pause", "resume", "config show",
        "config set", "config edit", "add-node", "remove-node", "restart", "reinit", "dsn",
    }


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 kB"), (12 * 1024, "12 kB"), (16 * 1024**2, "16 MB"),
     (3 * 1024**4, "3 TB"), (None, "")],
)
def test_human_bytes(value: int | None, text: str) -> None:
    assert human_bytes(value) == text


def test_format_lsn_and_summary() -> None:
    assert format_lsn(0x1_0000_00A0) == "1/000000A0"
    assert summarize({"a": 1, "b": "x y", "c": {"d": [1]}}) == 'a=1 b=x y c={"d":[1]}'
    assert len(summarize({"k": "v" * 500}, width=40)) == 40


def test_render_table_aligns() -> None:
    text = render_table(["A", "Long"], [["xyz", "1"], ["q", ""]])
    assert text.splitlines() == ["A    Long", "---  ----", "xyz  1", "q"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("42", 42), ("1.5", 1.5), ("true", True), ("null", None), ('{"a": [1]}', {"a": [1]}), ("8MB", "8MB"),
     ('"42"', "42"), ("", ""), ("NaN", "NaN"), ("on", "on")],
)
def test_parse_value(text: str, value: object) -> None:
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_parse_assignments_errors() -> None:
    assert parse_assignments(["a=1", "b=x=y"]) == {"a": 1, "b": "x=y"}
    for bad in (["a"], ["=1"], [" a=1"], ["a=1", "a=2"], []):
        with pytest.raises(CtlError):
            parse_assignments(bad)


def test_document_roundtrip_and_patch() -> None:
    old = {"a": 1, "b": {"c": [1, 2]}, "gone": "x", "flag": 1}
    for fmt in ("yaml", "json"):
        assert parse_document(dump_document(old, fmt), fmt) == old
    new = {"a": 1, "b": {"c": [1, 2, 3]}, "flag": True, "added": "y"}
    assert config_patch(old, new) == {"b": {"c": [1, 2, 3]}, "flag": True, "added": "y", "gone": None}
    assert config_patch(old, old) == {}
    assert parse_document("{}", "yaml") == {}
    for bad in ("[1]", "", "a: .nan", "1: x", "a: 2024-01-01", "a: {b"):
        with pytest.raises(CtlError):
            parse_document(bad, "yaml")


def test_parse_at() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    moment, naive = parse_at("2030-01-02T03:00:00Z", now)
    assert moment == datetime(2030, 1, 2, 3, tzinfo=UTC) and not naive
    moment, naive = parse_at("2030-01-02T03:00", now)
    assert naive and moment.tzinfo is not None
    with pytest.raises(CtlError, match="past"):
        parse_at((now - timedelta(hours=1)).isoformat(), now)
    with pytest.raises(CtlError, match="ISO 8601"):
        parse_at("tomorrow", now)


def _member(name: str, pg: str, **tags: object) -> dict[str, object]:
    return {"name": name, "pg_address": pg, "tags": tags}


def test_build_dsns() -> None:
    cluster = {
        "primary": "b",
        "members": [_member("a", "h1:5432"), _member("b", "h2:5433"), _member("c", "h3:5432", nofailover=True),
                    _member("d", "::1:5432", noloadbalance=True)],
    }
    uris = build_dsns(cluster, "app db", "bob")
    assert uris["writers"] == "postgresql://bob@h2:5433,h1:5432,[::1]:5432/app%20db?target_session_attrs=read-write"
    # Nothing libpq 15 (Debian 12's psql) rejects: no load_balance_hosts unless asked for.
    assert uris["readers"] == "postgresql://bob@h2:5433,h1:5432,h3:5432/app%20db?target_session_attrs=any"
    default = build_dsns(cluster, prefer_standby=True)
    assert default["writers"].startswith("postgresql://postgres@")  # as root, psql would otherwise ask for root
    assert default["readers"].endswith("/postgres?target_session_attrs=prefer-standby")
    spread = build_dsns(cluster, user=None, load_balance=True)
    assert spread["readers"] == "postgresql://h2:5433,h1:5432,h3:5432/postgres?target_session_attrs=any" \
        "&load_balance_hosts=random"


def test_parse_sse() -> None:
    lines = [": comment", "retry: 2000", "", "id: 5.0", "event: x", "data: {\"a\":", "data: 1}", "", "data: tail"]
    messages = list(parse_sse(lines))
    assert [(m.id, m.event, m.data) for m in messages] == [("5.0", "x", '{"a":\n1}'), (None, "message", "tail")]


def test_resolve_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAM_API", raising=False)
    assert resolve_urls([]) == ["http://127.0.0.1:8008"]
    monkeypatch.setenv("RAM_API", "a:1, https://b:2/ ,a:1")
    assert resolve_urls([]) == ["http://a:1", "https://b:2"]
    assert resolve_urls(["c:3,d:4", "e:5"]) == ["http://c:3", "http://d:4", "http://e:5"]
    with pytest.raises(CtlError):
        resolve_urls(["ftp://x"])


def test_split_address() -> None:
    assert split_address("db1:5432", "--pg") == ("db1", 5432)
    assert split_address("[::1]:5432", "--pg") == ("[::1]", 5432)
    for bad in ("db1", "db1:0", "db1:x", "::1:5432", ":5432"):
        with pytest.raises(CtlError):
            split_address(bad, "--pg")


def test_render_status_banners() -> None:
    cluster = {
        "cluster_name": "ram", "cluster_id": "x", "primary": "a", "timeline": 3, "raft_leader": "b", "raft_term": 7,
        "node": "a", "maintenance": True, "maintenance_reason": "upgrade", "pending_restart": ["p"],
        "synchronous": {"mode": "on", "num_sync": 1, "standbys": ["b"]},
        "members": [
            {"name": "a", "pg_address": "h1:5432", "role": "primary", "state": "running", "timeline": 3,
             "lag_bytes": 0, "is_raft_leader": False, "tags": {}},
            {"name": "b", "pg_address": "h2:5432", "role": "replica", "state": "running", "timeline": 3,
             "lag_bytes": 16 * 1024**2, "following": "a", "sync_standby": True, "is_raft_leader": True, "tags": {}},
        ],
    }
    lines = render_status(cluster).splitlines()
    assert lines[0] == "Cluster: ram (x) | primary: a | timeline: 3 | Raft leader: b, term 7 | answered by a"
    assert lines[3].split() == ["a", "h1:5432", "primary", "running", "3", "voter"]
    assert lines[4].split() == ["b", "h2:5432", "sync", "standby", "streaming", "3", "16", "leader"]
    assert "Maintenance mode: on (upgrade)" in lines and "Pending restart: p" in lines


def test_render_status_live_facts() -> None:
    """A replica whose RAM is down but whose PostgreSQL the primary sees streaming says so; a replica
    that runs without streaming is not called streaming; pending restarts get a column."""
    base = {"pg_address": "h:1", "role": "replica", "state": "running", "timeline": 2, "following": "a",
            "is_raft_leader": False, "tags": {}, "live": True}
    cluster = {
        "cluster_name": "ram", "primary": "a", "raft_leader": "a", "raft_term": 1, "node": "a",
        "members": [
            {**base, "name": "a", "role": "primary", "pending_restart": ["max_connections"]},
            {**base, "name": "b", "ram_reachable": False, "streaming": None, "seen_by_primary": "streaming",
             "lag_bytes": 3 * 2**20},
            {**base, "name": "c", "ram_reachable": True, "streaming": False, "lag_bytes": None},
        ],
    }
    lines = render_status(cluster).splitlines()
    header = ["Member", "Host", "Role", "State", "TL", "Lag", "in", "MB", "Raft", "Pending", "restart"]
    assert lines[1].split() == header
    assert lines[3].split()[-1] == "max_connections"
    assert lines[4].split()[3:7] == ["streaming", "(RAM", "down)", "2"] and "3.0" in lines[4]
    assert "running, not streaming" in lines[5]
