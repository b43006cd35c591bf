"""The event catalogue: round trips and decode errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from ram.eventstore import events as e

from .strategies import events


@settings(max_examples=200, deadline=None)
@given(events)
def test_encode_decode_round_trip(ev: e.Event) -> None:
    type_, version, payload = e.encode_event(ev)
    assert type_ == ev.type
    assert "type" not in payload
    assert version == 1
    text = json.dumps(payload)
    assert e.decode_event(type_, version, payload) == ev
    assert e.decode_event(type_, version, text) == ev
    assert e.decode_event(type_, version, json.loads(text)) == ev


@settings(max_examples=300, deadline=None)
@given(events)
def test_json_encoding_is_the_same_payload(ev: e.Event) -> None:
    """The apply path's one-call JSON encoding writes exactly the payload ``encode_event`` gives."""
    type_, version, text = e.encode_event_json(ev)
    assert (type_, version, json.loads(text)) == e.encode_event(ev)
    assert e.decode_event(type_, version, text) == ev


def test_every_type_is_registered_once() -> None:
    assert len(e.EVENT_TYPES) == 26
    for name, cls in e.EVENT_TYPES.items():
        assert cls.model_fields["type"].default == name
        assert cls.SCHEMA_VERSION == 1


def test_unknown_type_names_it_and_lists_known() -> None:
    with pytest.raises(e.UnknownEventType) as info:
        e.decode_event("member_exploded", 1, {})
    msg = str(info.value)
    assert "member_exploded" in msg and "member_added" in msg and "failover_completed" in msg
    assert isinstance(info.value, e.EventDecodeError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"name": "n1", "healthy": "yes", "pg_running": True}, "healthy"),
        ({"name": "", "healthy": True, "pg_running": True}, "name"),
        ({"name": "n1", "healthy": True, "pg_running": True, "lsn": -1}, "lsn"),
        ({"name": "n1", "healthy": True, "pg_running": True, "timeline": "3"}, "timeline"),
        ({"name": "n1", "healthy": True, "pg_running": True, "colour": "red"}, "colour"),
        ({"healthy": True, "pg_running": True}, "name"),
        ({"name": "n1", "healthy": True, "pg_running": True, "role": "leader"}, "role"),
    ],
)
def test_malformed_payload(payload: dict[str, object], fragment: str) -> None:
    with pytest.raises(e.MalformedEvent) as info:
        e.decode_event("member_health_changed", 1, payload)
    msg = str(info.value)
    assert "member_health_changed" in msg and fragment in msg
    assert "\n" not in msg


def test_malformed_json_text_and_non_object() -> None:
    with pytest.raises(e.MalformedEvent, match="not JSON"):
        e.decode_event("node_fenced", 1, "{nope")
    with pytest.raises(e.MalformedEvent, match="JSON object"):
        e.decode_event("node_fenced", 1, "[1, 2]")
    with pytest.raises(e.MalformedEvent, match="different type"):
        e.decode_event("node_fenced", 1, {"type": "member_added", "name": "n1", "reason": ""})


def test_schema_version_newer_than_code_is_an_error() -> None:
    _, _, payload = e.encode_event(e.NodeFenced(name="n1", reason="lease"))
    with pytest.raises(e.MalformedEvent, match="schema_version 2"):
        e.decode_event("node_fenced", 2, payload)
    with pytest.raises(e.MalformedEvent, match="schema_version 0"):
        e.decode_event("node_fenced", 0, payload)


def test_field_validation() -> None:
    spec = {"raft_address": "h:1", "api_address": "h:2", "pg_host": "h"}
    with pytest.raises(ValidationError):
        e.MemberAdded(name="n1", node_id=1, pg_port=0, **spec)
    with pytest.raises(ValidationError):
        e.MemberAdded(name="n1", node_id=1, pg_port=65536, **spec)
    with pytest.raises(ValidationError):
        e.MemberAdded(name="bad name", node_id=1, pg_port=5432, **spec)
    with pytest.raises(ValidationError):
        e.MemberAdded(name="n1", node_id=0, pg_port=5432, **spec)
    with pytest.raises(ValidationError):
        e.MemberRemoved(name="n1", node_id=1, reason="nul\x00")
    with pytest.raises(ValidationError):
        e.PrimaryPromoted(name="n1", timeline=1, lsn=-5)
    with pytest.raises(ValidationError):
        e.SynchronousStandbysChanged(mode="on", num_sync=2, standbys=("a",))
    with pytest.raises(ValidationError):
        e.SynchronousStandbysChanged(mode="off", num_sync=0, standbys=("a",))
    with pytest.raises(ValidationError):
        e.DynamicConfigChanged(changes={"x": e.ConfigChange(new=float("nan"))})
    with pytest.raises(ValidationError):
        e.DynamicConfigChanged(changes={})
    member = e.MemberSpec(name="a", node_id=1, pg_port=1, **spec)
    with pytest.raises(ValidationError, match="duplicate"):
        e.ClusterBootstrapped(cluster_id="c", cluster_name="c", members=(member, member))
    with pytest.raises(ValidationError):
        e.SwitchoverRequested(primary="a", scheduled_at="2024-01-01T00:00:00")  # naive
    ev = e.PrimaryPromoted(name="n1", timeline=1, lsn=1)
    with pytest.raises(ValidationError):
        ev.name = "n2"


def test_lsn_helpers() -> None:
    assert e.lsn_to_text(0x3000060) == "0/3000060"
    assert e.parse_lsn("0/3000060") == 0x3000060
    assert e.parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert e.lsn_to_text(e.parse_lsn("FFFFFFFF/FFFFFFFF")) == "FFFFFFFF/FFFFFFFF"
    for bad in ("", "0", "x/1", "1/", "123456789/0"):
        with pytest.raises(ValueError):
            e.parse_lsn(bad)
