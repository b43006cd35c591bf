"""The executor's dispatch table covers every keeper action."""

from __future__ import annotations

from typing import Any, cast

from ram.ha import keeper as k
from ram.ha.executor import Executor
from ram.ha.local import LocalFacts


def test_every_action_has_a_handler() -> None:
    none = cast(Any, None)
    ex = Executor(none, "pg1", none, LocalFacts(), none, none, none, none)
    actions = {
        cls
        for name in k.__all__
        if isinstance(cls := getattr(k, name), type) and issubclass(cls, k.Action) and cls is not k.Action
    }
    assert set(ex.handlers) == actions
