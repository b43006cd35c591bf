"""The executor's dispatch table covers every keeper action, and the rewind adapter."""

from __future__ import annotations

from typing import Any, cast

from ram.ha import keeper as k
from ram.ha.executor import Executor, could_not_reach_source
from ram.ha.local import LocalFacts
from ram.postgres.rewind import RewindResult


def test_every_action_has_a_handler() -> None:
    none = cast(Any, None)
    ex = Executor(none, "pg1", none, LocalFacts(), none, none, none, none)
    actions = {
        cls
        for name in k.__all__
        if isinstance(cls := getattr(k, name), type) and issubclass(cls, k.Action) and cls is not k.Action
    }
    assert set(ex.handlers) == actions


def test_rewind_source_unreachable() -> None:
    failed = RewindResult(False, False, 'pg_rewind: error: connection to server at "10.0.0.1", port 5432 failed')
    assert could_not_reach_source(failed)
    assert not could_not_reach_source(RewindResult(False, False, "could not find common ancestor"))
