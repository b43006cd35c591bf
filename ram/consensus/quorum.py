"""Majority arithmetic, kept apart so the rules are easy to read and to test on their own.

Membership changes are single-server (see ``core``), so there is only ever one voter set to count
against: no joint quorums.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(n: int) -> int:
    """Smallest number of voters that forms a quorum of ``n`` voters."""
    return n // 2 + 1


def committed_index(voters: Collection[int], match_of: Callable[[int], int]) -> int:
    """Largest index that a majority of ``voters`` has durably matched (0 for no voters).

    Sorting the matches descending, the quorum-th value is matched by at least a quorum.
    """
    if not voters:
        return 0
    matches = sorted((match_of(v) for v in voters), reverse=True)
    return matches[majority(len(matches)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """Tally ``votes`` (granted/rejected per node) counting only members of ``voters``."""
    if not voters:
        return VoteResult.LOST
    granted = rejected = 0
    for v in voters:
        got = votes.get(v)
        if got is True:
            granted += 1
        elif got is False:
            rejected += 1
    q = majority(len(voters))
    if granted >= q:
        return VoteResult.WON
    if len(voters) - rejected < q:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[int], ids: Collection[int]) -> bool:
    """True if ``ids`` contains a majority of ``voters``."""
    if not voters:
        return False
    return sum(1 for v in voters if v in ids) >= majority(len(voters))
