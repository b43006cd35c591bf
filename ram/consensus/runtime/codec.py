"""What travels inside a transport frame between two RAM nodes, and its msgpack encoding.

Three kinds of payload belong to the runtime: Raft messages, proposals forwarded by a follower to
the leader, and the leader's answer to such a forward (also the answer to an application request on
the leader channel). The application adds its own tagged structs for that channel (the HA layer's
lease requests and member reports, :mod:`ram.ha.wire`). msgspec decodes against these exact types,
so a malformed or hostile payload is a :class:`PayloadError`, never a half-built object.
"""

from __future__ import annotations

from typing import Any, Final, Union

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
    leader any more, timeout, rejected command), with ``leader_id`` as a hint where to retry;
    ``retry_safe`` when it certainly never commits (:class:`~ram.consensus.runtime.errors.NoLeaderError`).
    A node of an older release sends no ``retry_safe``: unknown, so nobody retries.
    """

    request_id: int
    ok: bool
    index: int = 0
    term: int = 0
    result: bytes = b""
    error: str = ""
    leader_id: int = 0
    retry_safe: bool = False


PeerPayload = RaftPayload | ForwardedProposal | ProposalOutcome

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(PeerPayload)


def encode_payload(payload: msgspec.Struct) -> bytes:
    return _ENCODER.encode(payload)


def decode_payload(body: bytes) -> PeerPayload:
    """Decode a runtime payload (Raft message, forward, outcome); the application's own kinds need
    a :class:`PayloadDecoder` that knows them."""
    try:
        result: PeerPayload = _DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        raise PayloadError(f"invalid peer payload: {exc}") from exc
    return result


class PayloadDecoder:
    """Decodes the runtime's payloads and the tagged structs the application registered for its
    leader channel (:meth:`ram.consensus.runtime.node.RaftNode.serve`)."""

    def __init__(self) -> None:
        self._kinds: tuple[type[msgspec.Struct], ...] = ()
        self._decoder: msgspec.msgpack.Decoder[Any] = _DECODER

    def register(self, kind: type[msgspec.Struct]) -> None:
        if kind in self._kinds:
            return
        self._kinds = (*self._kinds, kind)
        self._decoder = msgspec.msgpack.Decoder(Union[(RaftPayload, ForwardedProposal, ProposalOutcome, *self._kinds)])

    def decode(self, body: bytes) -> object:
        try:
            result: object = self._decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
            raise PayloadError(f"invalid peer payload: {exc}") from exc
        return result
