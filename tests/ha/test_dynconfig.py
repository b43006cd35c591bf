"""The dynamic configuration table: what is accepted, what runs, and the generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ram.ha.dynconfig import (
    DynamicConfigError,
    effective_settings,
    pg_parameters,
    reference_markdown,
    validate_changes,
)
from ram.ha.settings import HASettings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_docs_table_is_generated() -> None:
    assert reference_markdown() in DOCS.read_text(), "stale: run python -m ram.ha.dynconfig"


def test_dynamic_value_wins_over_the_node_file_and_removal_goes_back() -> None:
    base = HASettings(maximum_lag_on_failover=5, synchronous_mode="on")
    assert effective_settings(base, {}) is base
    eff = effective_settings(base, {"maximum_lag_on_failover": 7, "synchronous_mode": "quorum", "other": 1})
    assert (eff.maximum_lag_on_failover, eff.synchronous_mode) == (7, "quorum")
    assert effective_settings(base, {"maximum_lag_on_failover": None}).maximum_lag_on_failover == 5
    # A combination that does not validate against this node's file keeps the file, all of it.
    assert effective_settings(base, {"report_interval_s": 5.0, "maximum_lag_on_failover": 7}) == base


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"ttl": 30}, "unknown config key 'ttl'"),
        ({"lease_s": 1.0}, "not dynamic"),
        ({"synchronous_node_count": 0}, "greater than or equal to 1"),
        ({"synchronous_mode": "sometimes"}, "synchronous_mode"),
        ({"renew_interval_s": 1.0}, "renew_interval_s"),  # * 3 > lease_s: the relation is checked too
        ({"maximum_lag_on_failover": "1MB"}, "maximum_lag_on_failover"),
        ({"maximum_lag_on_failover": "1024"}, "a JSON integer is required"),
        ({"postgresql.parameters.synchronous_standby_names": "*"}, "set by RAM itself"),
        ({"postgresql.parameters.work_mem": [1]}, "a string, number or boolean"),
        ({"postgresql.parameters.work_mem": "a\nb"}, "single-line"),
    ],
)
def test_refused_with_the_key_and_what_is_allowed(change: dict[str, object], needle: str) -> None:
    with pytest.raises(DynamicConfigError) as err:
        validate_changes(HASettings(), {}, change)  # type: ignore[arg-type]
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_pg_parameters_render_for_postgresql_conf() -> None:
    dyn = {"postgresql.parameters.work_mem": "16MB", "postgresql.parameters.jit": False,
           "postgresql.parameters.max_connections": 150, "synchronous_mode": "on"}
    assert pg_parameters(dyn) == {"jit": "off", "max_connections": "150", "work_mem": "16MB"}
