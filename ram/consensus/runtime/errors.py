"""Why a proposal, a forwarded request or a read barrier did not go through."""

from __future__ import annotations


class ProposalError(RuntimeError):
    """A proposal did not commit; the message says why and what to do."""


class NoLeaderError(ProposalError):
    """No leader is known (election in progress or no quorum); ``leader_id`` hints where to retry.

    ``retry_safe``: the proposal certainly did not and never will commit (this node was not the
    leader, dropped it before appending it, or saw its entry replaced by a newer term's), so
    proposing it again can not apply it twice. False when the outcome is unknown (a leader that
    timed out and then lost leadership may still have it in its log).
    """

    def __init__(
        self, message: str, leader_id: int = 0, leader_address: str | None = None, *, retry_safe: bool = True
    ) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address
        self.retry_safe = retry_safe


class ProposalTimeout(ProposalError):
    """The proposal was not committed in time (typically: no quorum reachable)."""


class ProposalRefused(ProposalError):
    """The state machine (or the leader, for a peer's forward) would not take the proposal; nothing
    was committed."""


class CommandRefused(ProposalError):
    """The command committed but did not fit the state; nothing changed."""
