"""y-protocols framing as y-websocket speaks it: strict decoding, cheap encoding.

A frame is decoded exactly once, here, into a `Message`; nothing past this module looks at
raw varints. Decoding is strict because a lenient parser is how one bad client hurts a room:
every malformed frame raises `ProtocolError` carrying the close code and reason to send.
CRDT payloads (updates, state vectors) are validated by pycrdt when the room applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# Top-level message types (y-websocket).
MSG_SYNC = 0
MSG_AWARENESS = 1
MSG_AUTH = 2
MSG_QUERY_AWARENESS = 3

# Sync sub-types (y-protocols/sync).
SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

AUTH_PERMISSION_DENIED = 0

# lib0 encodes varuints of at most 53 bits (JS safe integers); we accept up to 64 bits of
# payload (10 bytes) as the issue demands and reject anything longer as malformed.
_MAX_VARINT_BYTES = 10
_MAX_VARINT = (1 << 64) - 1


class CloseCode(IntEnum):
    """WebSocket close codes this server sends (also listed in the README)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003  # a text frame
    INVALID_PAYLOAD = 1007  # a CRDT payload pycrdt refuses (invalid update / state vector)
    POLICY_VIOLATION = 1008  # rate limits
    MESSAGE_TOO_BIG = 1009  # frame over COLLAB_MAX_MESSAGE_BYTES (sent by the WebSocket layer)
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # send queue overflow, write backlog full, limits reached
    BAD_REQUEST = 4400  # malformed framing: unknown type, truncated varint, length past the end
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404  # the document does not exist or was deleted
    MISSING_DEPENDENCIES = 4409  # too many bytes of updates waiting for changes the room does not have
    DOCUMENT_TOO_LARGE = 4413  # the document is at its size limit: edits are refused
    TOO_MANY_REQUESTS = 4429


class ProtocolError(Exception):
    """A frame that must not be applied; the connection is closed with `code` and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Kind(IntEnum):
    SYNC_STEP1 = 1
    SYNC_STEP2 = 2
    SYNC_UPDATE = 3
    AWARENESS = 4
    AUTH = 5
    QUERY_AWARENESS = 6


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    payload: bytes  # state vector, update, awareness update, or auth reason (utf-8)


def read_varuint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode one LEB128 varuint at `pos`; return (value, next position)."""
    result = 0
    shift = 0
    end = len(buf)
    for i in range(_MAX_VARINT_BYTES):
        if pos >= end:
            raise ProtocolError(CloseCode.BAD_REQUEST, "truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result > _MAX_VARINT or (i == _MAX_VARINT_BYTES - 1 and byte > 1):
                raise ProtocolError(CloseCode.BAD_REQUEST, "varint over 64 bits")
            return result, pos
        shift += 7
    raise ProtocolError(CloseCode.BAD_REQUEST, "varint over 64 bits")


def read_var_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = read_varuint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise ProtocolError(CloseCode.BAD_REQUEST, "length past the end of the frame")
    return buf[pos:end], end


def write_varuint(value: int) -> bytes:
    # The short cases unrolled: lengths and clocks are almost always below 2**21.
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _expect_end(buf: bytes, pos: int) -> None:
    if pos != len(buf):
        raise ProtocolError(CloseCode.BAD_REQUEST, "trailing bytes after the message")


_SYNC_KINDS = {SYNC_STEP1: Kind.SYNC_STEP1, SYNC_STEP2: Kind.SYNC_STEP2, SYNC_UPDATE: Kind.SYNC_UPDATE}


def decode(frame: bytes) -> Message:
    """Decode one binary frame into a Message, or raise ProtocolError."""
    if not frame:
        raise ProtocolError(CloseCode.BAD_REQUEST, "empty frame")
    msg_type, pos = read_varuint(frame, 0)
    if msg_type == MSG_SYNC:
        sub, pos = read_varuint(frame, pos)
        kind = _SYNC_KINDS.get(sub)
        if kind is None:
            raise ProtocolError(CloseCode.BAD_REQUEST, f"unknown sync message type {sub}")
        payload, pos = read_var_bytes(frame, pos)
        _expect_end(frame, pos)
        return Message(kind, payload)
    if msg_type == MSG_AWARENESS:
        payload, pos = read_var_bytes(frame, pos)
        _expect_end(frame, pos)
        return Message(Kind.AWARENESS, payload)
    if msg_type == MSG_QUERY_AWARENESS:
        _expect_end(frame, pos)
        return Message(Kind.QUERY_AWARENESS, b"")
    if msg_type == MSG_AUTH:
        # Clients have no business sending auth messages; keep the reason for the log.
        sub, pos = read_varuint(frame, pos)
        reason, pos = read_var_bytes(frame, pos)
        _expect_end(frame, pos)
        return Message(Kind.AUTH, reason)
    raise ProtocolError(CloseCode.BAD_REQUEST, f"unknown message type {msg_type}")


def write_var_bytes(data: bytes) -> bytes:
    return write_varuint(len(data)) + data


def _frame(prefix: bytes, payload: bytes) -> bytes:
    return b"".join((prefix, write_varuint(len(payload)), payload))


def encode_sync_step1(state_vector: bytes) -> bytes:
    return _frame(b"\x00\x00", state_vector)


def encode_sync_step2(update: bytes) -> bytes:
    return _frame(b"\x00\x01", update)


def encode_update(update: bytes) -> bytes:
    return _frame(b"\x00\x02", update)


def encode_awareness(awareness_update: bytes) -> bytes:
    return _frame(b"\x01", awareness_update)


def encode_permission_denied(reason: str) -> bytes:
    return _frame(b"\x02\x00", reason.encode())
