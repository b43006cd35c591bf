"""The one TOML writer: whatever it writes, tomllib reads back as the same value - including the
strings that broke the old hand-written local-cluster config (quotes, backslashes, newlines)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ram import localcluster as lc
from ram.tomltext import toml_key, toml_line, toml_value

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12
)


@given(st.text(min_size=1), values)
def test_round_trip(key: str, value: object) -> None:
    assert tomllib.loads(toml_line(key, value)) == {key: value}


def test_special_floats_and_keys() -> None:
    doc = tomllib.loads("\n".join([toml_line("a", math.inf), toml_line("b", -math.inf), toml_line("c", math.nan)]))
    assert doc["a"] == math.inf and doc["b"] == -math.inf and math.isnan(doc["c"])
    assert toml_key("plain_key-1") == "plain_key-1"
    assert toml_key("a.b") == '"a.b"'
    assert toml_value(Path("/x/y")) == '"/x/y"'
    with pytest.raises(TypeError):
        toml_value(None)


def test_local_cluster_config_keeps_awkward_values(tmp_path: Path) -> None:
    info = lc.plan(tmp_path / 'we"ird\\dir', 3, 20000, name='na"me')
    info.replication_password = 'pa"ss\\word\n'
    member = info.members[0]
    doc = tomllib.loads(lc.node_config_toml(info, member, 'postgresql://u@h/d?x="y"', {"label": 'a"b'}))
    assert doc["postgres"]["replication_password"] == 'pa"ss\\word\n'
    assert doc["cluster_name"] == 'na"me'
    assert doc["store"]["dsn"] == 'postgresql://u@h/d?x="y"'
    assert doc["data_dir"] == str(member.node_dir)
    assert doc["ha"] == {"label": 'a"b'}
    assert [p["name"] for p in doc["raft"]["peers"]] == [m.name for m in info.members[1:]]
