"""Wire format of the Raft peer transport: length-prefixed frames and the connection handshake.

Every frame on a peer connection is a 4-byte big-endian unsigned length followed by that many bytes
of body. The framing layer never looks inside a data frame's body: the Raft runtime encodes its
messages itself, so the transport only has to move opaque bytes and the two layers can evolve apart.

Handshake (protocol version 2), all frames msgpack-encoded with msgspec (schema-checked decoding,
so a stranger speaking garbage gets a clean error rather than a half-parsed object)::

    dialer   -> listener   Hello(version, cluster_id, node_id, to_node, nonce_d)
    listener -> dialer     Challenge(nonce_l)            (or HelloReply(ok=False) on a version mismatch)
    dialer   -> listener   Proof(mac_d)
    listener -> dialer     HelloReply(ok, reason, mac_l)

``mac_d = HMAC-SHA256(secret, "ram-raft-peer/2 dialer" || transcript)`` and ``mac_l`` the same with
``listener``, where the transcript binds the cluster id, both node ids and both nonces
(:func:`handshake_mac`). Each side proves knowledge of the shared cluster secret for *this*
connection, in *its* direction, for *its* node id; the secret never crosses the wire, a proof can
not be replayed (fresh nonces on both sides) nor reflected (the direction label). The listener
proves itself only after the dialer did, so a stranger can not use it as an oracle. Without a
secret (TLS-only or insecure clusters) the macs are empty and the exchange costs one extra round
trip on a connection that lives for hours.

A refusal says only ``refused``: the refusing side logs the real reason (wrong cluster id, unknown
node, bad proof, untrusted certificate), the dialer learns nothing it could use to guess. Only after
an ``ok`` reply do data frames flow, and only from dialer to acceptor.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
from typing import Final

import msgspec

#: Bumped on any incompatible change to framing or handshake; the acceptor refuses other versions.
#: 1: Hello/HelloReply only (no authentication). 2: challenge-response and the "refused" reply.
PROTOCOL_VERSION: Final = 2

#: Frame header: 4-byte big-endian body length.
HEADER: Final = struct.Struct(">I")
HEADER_SIZE: Final = HEADER.size

#: Largest handshake frame either side accepts. Kept tiny because it is read before we know who is
#: talking: an unauthenticated stranger must not make us allocate the full data-frame limit.
HANDSHAKE_MAX_BYTES: Final = 4096

#: Largest length the 4-byte header can express.
MAX_ENCODABLE_FRAME: Final = (1 << 32) - 1

#: Bytes of each side's handshake nonce.
NONCE_BYTES: Final = 32

#: The only reason a refused dialer is ever given.
REFUSED: Final = "refused"


class FrameError(Exception):
    """The byte stream is not a valid frame sequence; the connection must be closed."""


class FrameTooLarge(FrameError):
    """A frame header announces a body longer than the configured limit."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class Hello(msgspec.Struct, tag="hello", frozen=True):
    """Dialer's introduction: who it is, which cluster it believes it belongs to, whom it dials.

    ``nonce`` and ``to_node`` default to empty so that a version-1 hello still decodes and is refused
    for its version (with a clear log line) rather than as garbage. ``app_level``: which release of
    the replicated application the dialer runs (what it can apply); a node of an older release
    sends none (0). It does not change the protocol, so it is not part of the version.
    """

    version: int
    cluster_id: str
    node_id: int
    to_node: int = 0
    nonce: bytes = b""
    app_level: int = 0


class Challenge(msgspec.Struct, tag="challenge", frozen=True):
    """Listener's fresh nonce, which the dialer's proof must cover."""

    nonce: bytes


class Proof(msgspec.Struct, tag="proof", frozen=True):
    """Dialer's HMAC over the handshake transcript (empty when no secret is configured)."""

    mac: bytes


class HelloReply(msgspec.Struct, tag="hello_reply", frozen=True):
    """Acceptor's verdict. ``reason`` is ``"refused"`` on every refusal (the acceptor logs why);
    ``mac`` is the listener's own proof on success (empty when no secret is configured);
    ``app_level`` the listener's, as in :class:`Hello`."""

    ok: bool
    reason: str = ""
    mac: bytes = b""
    app_level: int = 0


_hello_encoder: Final = msgspec.msgpack.Encoder()
_hello_decoder: Final = msgspec.msgpack.Decoder(Hello)
_proof_decoder: Final = msgspec.msgpack.Decoder(Proof)
_reply_decoder: Final = msgspec.msgpack.Decoder(HelloReply)
_challenge_decoder: Final = msgspec.msgpack.Decoder(Challenge | HelloReply)


def handshake_mac(
    secret: bytes, direction: str, cluster_id: str, dialer: int, listener: int, dialer_nonce: bytes,
    listener_nonce: bytes,
) -> bytes:
    """HMAC-SHA256 of one side's proof. ``direction`` is ``"dialer"`` or ``"listener"``.

    Every field has a fixed size or a terminator (cluster ids can not contain NUL), so no two
    different transcripts serialise to the same bytes.
    """
    transcript = b"".join(
        (
            b"ram-raft-peer/2 ", direction.encode(), b"\0", cluster_id.encode(), b"\0",
            dialer.to_bytes(8, "big"), listener.to_bytes(8, "big"), dialer_nonce, listener_nonce,
        )
    )
    return hmac.new(secret, transcript, hashlib.sha256).digest()


def encode_frame(body: bytes) -> bytes:
    """One frame (header + body) as a single bytes object."""
    return HEADER.pack(len(body)) + body


def encode_hello(hello: Hello) -> bytes:
    """A complete hello frame."""
    return encode_frame(_hello_encoder.encode(hello))


def encode_challenge(challenge: Challenge) -> bytes:
    """A complete challenge frame."""
    return encode_frame(_hello_encoder.encode(challenge))


def encode_proof(proof: Proof) -> bytes:
    """A complete proof frame."""
    return encode_frame(_hello_encoder.encode(proof))


def encode_reply(reply: HelloReply) -> bytes:
    """A complete hello-reply frame."""
    return encode_frame(_hello_encoder.encode(reply))


def decode_hello(body: bytes) -> Hello:
    """Decode a hello body; raises :class:`FrameError` on anything that is not a valid hello."""
    try:
        return _hello_decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError subclass
        raise FrameError(f"malformed hello: {exc}") from exc


def decode_challenge(body: bytes) -> Challenge | HelloReply:
    """The listener's answer to a hello: a challenge, or an early refusal (version mismatch)."""
    try:
        result: Challenge | HelloReply = _challenge_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise FrameError(f"malformed challenge: {exc}") from exc
    return result


def decode_proof(body: bytes) -> Proof:
    """Decode a proof body; raises :class:`FrameError` on anything else."""
    try:
        return _proof_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise FrameError(f"malformed proof: {exc}") from exc


def decode_reply(body: bytes) -> HelloReply:
    """Decode a hello-reply body; raises :class:`FrameError` on anything else."""
    try:
        return _reply_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise FrameError(f"malformed hello reply: {exc}") from exc


async def read_one_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """Read exactly one frame body, without reading past it (used for the handshake).

    Raises :class:`FrameTooLarge` before allocating anything if the header is over ``max_bytes``,
    and :class:`asyncio.IncompleteReadError` if the stream ends mid-frame.
    """
    header = await reader.readexactly(HEADER_SIZE)
    (length,) = HEADER.unpack(header)
    if length > max_bytes:
        raise FrameTooLarge(length, max_bytes)
    return await reader.readexactly(length)


class FrameDecoder:
    """Incremental decoder: feed it whatever ``read()`` returned, get back the complete frames.

    Parsing many frames out of one large read (instead of two ``readexactly`` awaits per frame) is
    what lets the receiving side keep up with a pipelined sender. The length is checked as soon as a
    header is complete, so an oversize frame is rejected before its body is buffered.
    """

    __slots__ = ("_buf", "_max", "error")

    def __init__(self, max_frame_bytes: int) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes
        #: Set once an oversize header is seen; the stream is unusable from there on.
        self.error: FrameTooLarge | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame; non-zero at EOF means the stream was truncated."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data`` and return every frame body now complete, in order.

        Frames that precede an oversize header are still returned (they were valid); the error is
        then recorded in :attr:`error` and raised by the next call. Callers check :attr:`error` after
        handling the returned frames and close the connection if it is set.
        """
        if self.error is not None:
            raise self.error
        src: bytes | bytearray
        if self._buf:
            self._buf += data
            src = self._buf
        else:
            src = data
        frames: list[bytes] = []
        end_of_src = len(src)
        offset = 0
        unpack_from = HEADER.unpack_from
        limit = self._max
        while end_of_src - offset >= HEADER_SIZE:
            (length,) = unpack_from(src, offset)
            if length > limit:
                self.error = FrameTooLarge(length, limit)
                if not frames:
                    raise self.error
                break
            end = offset + HEADER_SIZE + length
            if end > end_of_src:
                break
            frames.append(bytes(src[offset + HEADER_SIZE : end]))
            offset = end
        if src is self._buf:
            del self._buf[:offset]
        elif offset < end_of_src:
            self._buf = bytearray(src[offset:])
        return frames
