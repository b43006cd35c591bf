"""Pure pieces of the API: lag units, config patch validation, restart flags, health verdicts."""

from __future__ import annotations

import pytest

from ram.api.action_routes import pending_restart_after, validate_patch
from ram.api.errors import ApiError
from ram.api.health_routes import parse_lag
from ram.postgres.parameters import needs_restart
from ram.projections.state import ClusterState


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("1024", 1024), ("512kB", 512 * 1024), ("16MB", 16 * 1024**2), ("1GB", 1024**3), ("2 tb", 2 * 1024**4),
     ("7B", 7), (" 3mb ", 3 * 1024**2)],
)
def test_parse_lag(text: str, expected: int) -> None:
    assert parse_lag(text) == expected


@pytest.mark.parametrize("text", ["12XB", "", "-1", "1.5GB", "MB", "16 M B", "9" * 25, "99999999999TB"])
def test_parse_lag_rejects(text: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_lag(text)
    assert err.value.status == 400 and "lag" in err.value.message


def test_validate_patch() -> None:
    ok = {"synchronous_mode": "on", "maximum_lag_on_failover": None, "postgresql.parameters.work_mem": "8MB"}
    assert validate_patch(ok) == ok
    for bad in ([1], "x", {"": 1}, {" ttl": 1}, {"ttl": 30}, {"postgresql.parameters.bad name": 1}, {"k": "nul\x00"},
                {"postgresql.parameters.work_mem": {"a": [1]}}, {"synchronous_node_count": 0}):
        with pytest.raises(ApiError) as err:
            validate_patch(bad)
        assert err.value.status == 400


def test_pending_restart_flags_only_real_changes_of_restart_parameters() -> None:
    assert needs_restart("postgresql.parameters.max_connections")
    assert needs_restart("postgresql.parameters.Shared_Buffers")
    assert not needs_restart("postgresql.parameters.work_mem")
    assert not needs_restart("max_connections")
    state = ClusterState(dynamic_config={"postgresql.parameters.max_connections": 100},
                         pending_restart=("postgresql.parameters.wal_level",))
    changes: dict[str, object] = {
        "postgresql.parameters.max_connections": 100,  # unchanged: not flagged
        "postgresql.parameters.shared_buffers": "1GB",
        "postgresql.parameters.work_mem": "8MB",
    }
    assert pending_restart_after(state, changes) == (  # type: ignore[arg-type]
        "postgresql.parameters.shared_buffers",
        "postgresql.parameters.wal_level",
    )
    assert pending_restart_after(state, {"postgresql.parameters.max_connections": None}) == (
        "postgresql.parameters.max_connections",
        "postgresql.parameters.wal_level",
    )
