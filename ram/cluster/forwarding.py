"""Which commands the leader accepts from another node: peers speak only for themselves.

A follower forwards to the leader what its own API or its own HA controller proposes. The leader
must not commit on a peer's word what only the leader itself decides — the arbiter's ``Arbitrate``
(failovers, primaries, health verdicts, the synchronous set), leadership records, learner
promotions, the bootstrap — nor a fact a node reports about *another* member. Without this rule one
compromised or buggy member could promote whomever it likes by forwarding an ``Arbitrate``.

The sender is the node id the transport authenticated for the connection (see
:mod:`ram.consensus.runtime.transport`), never a field of the message itself.
"""

from __future__ import annotations

from ram.eventstore.commands import (
    AddMember,
    CommandEnvelope,
    PatchConfig,
    RemoveMember,
    ReportFact,
    RequestMemberAction,
    RequestSwitchover,
    SetMaintenance,
    SetTags,
    StartFailover,
)
from ram.eventstore.events import MemberHealthChanged
from ram.projections.state import ClusterState

__all__ = ["CLIENT_COMMANDS", "forwarded_refusal"]

#: Operator commands any member's API may propose (the API authenticates and authorises the
#: operator; Raft only carries the request). Everything else is internal to the leader, except
#: :class:`ReportFact` about the sending member itself.
CLIENT_COMMANDS = (
    SetMaintenance,
    SetTags,
    PatchConfig,
    AddMember,
    RemoveMember,
    RequestSwitchover,
    StartFailover,
    RequestMemberAction,
)


def _member_of(state: ClusterState, node_id: int) -> str | None:
    for name, member in state.members.items():
        if member.node_id == node_id:
            return name
    return None


def forwarded_refusal(state: ClusterState, sender: int, envelope: CommandEnvelope) -> str | None:
    """Why the leader refuses ``envelope`` forwarded by node ``sender``, or None to propose it.

    * the envelope's ``proposer`` must be the sender (events record who proposed);
    * client commands pass;
    * a fact report passes only when it is about the sender's own member, and a member may declare
      itself unhealthy but never healthy (health is the arbiter's verdict);
    * anything else is the leader's own business and is refused.
    """
    command = envelope.command
    kind = getattr(command, "kind", type(command).__name__)
    if envelope.proposer != sender:
        return f"node {sender} can not propose on behalf of node {envelope.proposer}"
    if isinstance(command, CLIENT_COMMANDS):
        return None
    if isinstance(command, ReportFact):
        fact = command.event
        subject: str | None = getattr(fact, "name", None)
        own = _member_of(state, sender)
        if subject is None or subject != own:
            about = subject or "the cluster"
            return f"node {sender} ({own or 'not a member'}) can not report {fact.type} about {about}"
        if isinstance(fact, MemberHealthChanged) and fact.healthy:
            return f"node {sender} can not declare itself healthy (the arbiter decides health)"
        return None
    return f"{kind} is decided by the leader only; node {sender} can not forward it"
