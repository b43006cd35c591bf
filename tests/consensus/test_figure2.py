"""Every rule of Figure 2, of single-server membership changes, of the persistence contract and of
ReadIndex holds for the shipped core (the checks live in ``rules.py``; the table in ``RULES.md``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ram.consensus.core import RaftCore
from tests.consensus.rules import ALL_CHECKS, Core


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_rule_holds(check: Callable[[Core], None]) -> None:
    check(RaftCore)
