"""What travels inside a transport frame between two RAM nodes, and its msgpack encoding.

Three kinds of payload share the peer connection: Raft messages, proposals forwarded by a follower
to the leader, and the leader's answer to such a forward. msgspec decodes against these exact types,
so a malformed or hostile payload is a :class:`PayloadError`, never a half-built object.
"""

from __future__ import annotations

from typing import Final

import msgspec

from ram.consensus.types import Message


class PayloadError(ValueError):
    """A frame body that is not a valid peer payload."""


class RaftPayload(msgspec.Struct, tag="raft", frozen=True):
    """A Raft message for the receiver's core."""

    message: Message


class ForwardedProposal(msgspec.Struct, tag="propose", frozen=True):
    """A command a follower received and hands to the leader; answered by :class:`ProposalOutcome`."""

    request_id: int
    data: bytes
    read_only: bool = False


class ProposalOutcome(msgspec.Struct, tag="outcome", frozen=True):
    """The leader's answer to a :class:`ForwardedProposal`.

    ``index``/``term`` locate the committed entry; ``error`` is set when the proposal failed (not
    leader any more, timeout, rejected command), with ``leader_id`` as a hint where to retry.
    """

    request_id: int
    ok: bool
    index: int = 0
    term: int = 0
    result: bytes = b""
    error: str = ""
    leader_id: int = 0


class MemberReport(msgspec.Struct, tag="report", frozen=True):
    """A member's observation of its own PostgreSQL, sent to the Raft leader (the arbiter).

    The body is the HA layer's business (JSON); the Raft node only routes it.
    """

    body: bytes


class LeaseRequest(msgspec.Struct, tag="lease", frozen=True):
    """The primary asks the leader to renew its lease; answered by :class:`ProposalOutcome` (``ok`` =
    granted, ``error`` = why not). The leader confirms its leadership with a quorum round started
    after this request arrived, so a grant is never older than the request."""

    request_id: int
    #: The holder's own lease length in seconds, so the leader waits at least that long before it
    #: treats the lease as expired even when their settings differ (a rolling upgrade). 0: not
    #: announced (a node of an older release; msgspec leaves the field out of their decoding).
    lease_s: float = 0.0


PeerPayload = RaftPayload | ForwardedProposal | ProposalOutcome | MemberReport | LeaseRequest

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(PeerPayload)


def encode_payload(payload: PeerPayload) -> bytes:
    return _ENCODER.encode(payload)


def decode_payload(body: bytes) -> PeerPayload:
    try:
        result: PeerPayload = _DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        raise PayloadError(f"invalid peer payload: {exc}") from exc
    return result
