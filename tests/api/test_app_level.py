"""Entries an older release could not apply are not proposed while such a member is known.

A member's release level comes from its peer handshake (tests/runtime/test_transport.py covers the
handshake); here one member is made to look like an older release and a fact only this release
knows is proposed: refused, with the member named, and accepted again once it is "upgraded".
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ram.consensus.runtime.errors import ProposalRefused
from ram.eventstore.commands import APP_LEVEL, ReportFact, SetMaintenance, required_level
from ram.eventstore.events import CallbackRan, MemberHealthChanged
from tests.api.conftest import ApiCluster


def test_only_the_new_facts_need_the_new_level() -> None:
    assert required_level(ReportFact(event=CallbackRan(name="a", hook="on_start", role="replica", outcome="ok"))) == 1
    assert required_level(ReportFact(event=MemberHealthChanged(name="a", healthy=True, pg_running=True))) == 0
    assert required_level(SetMaintenance(enabled=True)) == 0
    assert APP_LEVEL >= 1


async def test_a_fact_an_older_member_can_not_apply_is_not_proposed(api_cluster: ApiCluster) -> None:
    await api_cluster.settled()
    node, other = api_cluster.nodes[0], api_cluster.nodes[1]
    deadline = time.monotonic() + 10
    while node.raft.peer_app_level(other.config.node_id) != APP_LEVEL:  # learned at its handshake
        assert time.monotonic() < deadline, "peer level never learned"
        await asyncio.sleep(0.05)
    assert node.members_behind(APP_LEVEL) == []
    fact = ReportFact(event=CallbackRan(name=node.config.name, hook="on_start", role="replica", outcome="ok"))

    node.raft.transport.peer_app_levels[other.config.node_id] = 0  # as an older release's hello says
    try:
        assert node.members_behind(APP_LEVEL) == [other.config.name]
        with pytest.raises(ProposalRefused, match=f"{other.config.name} run.*older release.*upgrade every node"):
            await node.propose(fact, visible=False)
    finally:
        node.raft.transport.peer_app_levels[other.config.node_id] = APP_LEVEL
    result = await node.propose(fact, visible=False)
    assert [e.type for e in result.events] == ["callback_ran"]
