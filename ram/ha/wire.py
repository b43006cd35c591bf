"""What the HA layer sends to the Raft leader over the runtime's leader channel.

Both kinds keep the tags and fields they had when the runtime carried them itself, so that nodes of
an older release (rolling upgrades) still understand them.
"""

from __future__ import annotations

import msgspec


class MemberReport(msgspec.Struct, tag="report", frozen=True):
    """A member's observation of its own PostgreSQL, sent to the Raft leader (the arbiter).

    The body is the HA layer's JSON (:mod:`ram.ha.arbiter_runner`); the runtime only routes it.
    """

    body: bytes


class LeaseRequest(msgspec.Struct, tag="lease", frozen=True):
    """The primary asks the leader to renew its lease; answered ok (granted) or with why not.

    The leader confirms its leadership with a quorum round started after this request arrived, so a
    grant is never older than the request.
    """

    request_id: int
    #: The holder's own lease length in seconds, so the leader waits at least that long before it
    #: treats the lease as expired even when their settings differ (a rolling upgrade). 0: not
    #: announced (a node of an older release; msgspec leaves the field out of their decoding).
    lease_s: float = 0.0
