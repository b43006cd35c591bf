"""Wire format of the Raft peer transport: length-prefixed frames and the connection handshake.

Every frame on a peer connection is a 4-byte big-endian unsigned length followed by that many bytes
of body. The framing layer never looks inside a data frame's body: the Raft runtime encodes its
messages itself, so the transport only has to move opaque bytes and the two layers can evolve apart.

The first frame on a connection is the dialer's :class:`Hello` and the first frame back is the
acceptor's :class:`HelloReply`, both msgpack-encoded with msgspec (schema-checked decoding, so a
stranger speaking garbage gets a clean error rather than a half-parsed object). Only after an ``ok``
reply do data frames flow, and only from dialer to acceptor.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Final

import msgspec

#: Bumped on any incompatible change to framing or handshake; the acceptor refuses other versions.
PROTOCOL_VERSION: Final = 1

#: Frame header: 4-byte big-endian body length.
HEADER: Final = struct.Struct(">I")
HEADER_SIZE: Final = HEADER.size

#: Largest handshake frame either side accepts. Kept tiny because it is read before we know who is
#: talking: an unauthenticated stranger must not make us allocate the full data-frame limit.
HANDSHAKE_MAX_BYTES: Final = 4096

#: Largest length the 4-byte header can express.
MAX_ENCODABLE_FRAME: Final = (1 << 32) - 1


class FrameError(Exception):
    """The byte stream is not a valid frame sequence; the connection must be closed."""


class FrameTooLarge(FrameError):
    """A frame header announces a body longer than the configured limit."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class Hello(msgspec.Struct, tag="hello", frozen=True):
    """Dialer's introduction: who it is and which cluster it believes it belongs to."""

    version: int
    cluster_id: str
    node_id: int


class HelloReply(msgspec.Struct, tag="hello_reply", frozen=True):
    """Acceptor's verdict on a :class:`Hello`; ``reason`` explains a refusal to the dialer's operator."""

    ok: bool
    reason: str = ""


_hello_encoder: Final = msgspec.msgpack.Encoder()
_hello_decoder: Final = msgspec.msgpack.Decoder(Hello)
_reply_decoder: Final = msgspec.msgpack.Decoder(HelloReply)


def encode_frame(body: bytes) -> bytes:
    """One frame (header + body) as a single bytes object."""
    return HEADER.pack(len(body)) + body


def encode_hello(hello: Hello) -> bytes:
    """A complete hello frame."""
    return encode_frame(_hello_encoder.encode(hello))


def encode_reply(reply: HelloReply) -> bytes:
    """A complete hello-reply frame."""
    return encode_frame(_hello_encoder.encode(reply))


def decode_hello(body: bytes) -> Hello:
    """Decode a hello body; raises :class:`FrameError` on anything that is not a valid hello."""
    try:
        return _hello_decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError subclass
        raise FrameError(f"malformed hello: {exc}") from exc


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
