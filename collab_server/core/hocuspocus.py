"""The Hocuspocus dialect: many documents over one socket, each message addressed by name.

`@hocuspocus/provider` (3.x and 4.x) prefixes every message with a varString address (the
document name, or `name\\0session` for a session-aware 4.x provider) followed by a varUint type.
For Sync, Awareness and QueryAwareness what follows the address is byte for byte a y-websocket
frame, so those are decoded by `protocol.decode` and handed to the same rooms; the other types
(Auth, Stateless, Close, SyncStatus, Ping/Pong) exist only here. Decoding is as strict as on the
y-websocket route: a malformed frame raises `ProtocolError` with the same close codes.

A room sends every connection y-websocket frames; a Hocuspocus channel's peer prefixes them with
its address. What differs in behaviour lives in `HocuspocusConnection`: it acknowledges every
edit with SyncStatus (the provider's `unsyncedChanges` counts down on them) and receives stateless
messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from .connection import Connection
from .protocol import (
    CloseCode,
    Message,
    ProtocolError,
    decode,
    read_var_bytes,
    read_varuint,
    write_var_bytes,
)

# Message types of @hocuspocus/provider and @hocuspocus/server (their `MessageType` enums).
MSG_SYNC = 0
MSG_AWARENESS = 1
MSG_AUTH = 2
MSG_QUERY_AWARENESS = 3
MSG_SYNC_REPLY = 4  # server-to-server flavour of Sync; accepted as Sync
MSG_STATELESS = 5
MSG_BROADCAST_STATELESS = 6  # server-internal in Hocuspocus: never legitimate from a client
MSG_CLOSE = 7
MSG_SYNC_STATUS = 8
MSG_PING = 9
MSG_PONG = 10

# Auth sub-types (@hocuspocus/common `AuthMessageType`).
AUTH_TOKEN = 0
AUTH_PERMISSION_DENIED = 1
AUTH_AUTHENTICATED = 2

SCOPE_READ_WRITE = "read-write"
SCOPE_READONLY = "readonly"

MAX_ADDRESS_BYTES = 512  # a document name plus a session id; anything longer is not a name
_PING = bytes((MSG_PING,))
PONG = bytes((MSG_PONG,))
_SYNC_STATUS_APPLIED = bytes((MSG_SYNC_STATUS, 1))
_SYNC_STATUS_REFUSED = bytes((MSG_SYNC_STATUS, 0))


class Kind(IntEnum):
    ROOM = 1  # Sync / Awareness / QueryAwareness: `message` is for the room
    AUTH = 2  # `text` is the token
    STATELESS = 3  # `text` is the payload
    CLOSE = 4  # the provider detached this document
    PING = 5  # connection-level, no address
    PONG = 6
    IGNORED = 7  # SyncStatus from a client: nothing to do


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    address: str = ""
    message: Message | None = None
    text: str = ""

    @property
    def document_name(self) -> str:
        """The address without a session-aware provider's `\\0session` suffix."""
        return self.address.split("\0", 1)[0]


def _read_string(buf: bytes, pos: int, what: str, limit: int | None = None) -> tuple[str, int]:
    raw, pos = read_var_bytes(buf, pos)
    if limit is not None and len(raw) > limit:
        raise ProtocolError(CloseCode.BAD_REQUEST, f"{what} longer than {limit} bytes")
    try:
        return raw.decode(), pos
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.BAD_REQUEST, f"{what} is not valid UTF-8") from None


def _expect_end(buf: bytes, pos: int) -> None:
    if pos != len(buf):
        raise ProtocolError(CloseCode.BAD_REQUEST, "trailing bytes after the message")


_PING_FRAME = Frame(Kind.PING)
_PONG_FRAME = Frame(Kind.PONG)


def decode_frame(frame: bytes) -> Frame:
    """Decode one binary frame of the Hocuspocus route, or raise ProtocolError."""
    if not frame:
        raise ProtocolError(CloseCode.BAD_REQUEST, "empty frame")
    if frame == _PING:  # connection-level keepalive of 4.x providers: a bare type byte
        return _PING_FRAME
    if frame == PONG:
        return _PONG_FRAME
    address, pos = _read_string(frame, 0, "document name", MAX_ADDRESS_BYTES)
    if not address:
        raise ProtocolError(CloseCode.BAD_REQUEST, "empty document name")
    msg_type, body = read_varuint(frame, pos)
    if msg_type in (MSG_SYNC, MSG_AWARENESS, MSG_QUERY_AWARENESS):
        return Frame(Kind.ROOM, address, decode(frame[pos:]))
    if msg_type == MSG_SYNC_REPLY:
        return Frame(Kind.ROOM, address, decode(bytes((MSG_SYNC,)) + frame[body:]))
    if msg_type == MSG_AUTH:
        sub, p = read_varuint(frame, body)
        if sub != AUTH_TOKEN:
            raise ProtocolError(CloseCode.BAD_REQUEST, f"a client may only send auth tokens, not type {sub}")
        token, p = _read_string(frame, p, "token", 16 * 1024)
        if p < len(frame):  # newer providers append their version
            _version, p = _read_string(frame, p, "provider version", 256)
        _expect_end(frame, p)
        return Frame(Kind.AUTH, address, text=token)
    if msg_type == MSG_STATELESS:
        payload, p = _read_string(frame, body, "stateless payload")
        _expect_end(frame, p)
        return Frame(Kind.STATELESS, address, text=payload)
    if msg_type == MSG_CLOSE:
        if body < len(frame):
            _reason, body = _read_string(frame, body, "close reason", 1024)
        _expect_end(frame, body)
        return Frame(Kind.CLOSE, address)
    if msg_type == MSG_SYNC_STATUS:
        return Frame(Kind.IGNORED, address)
    if msg_type == MSG_BROADCAST_STATELESS:
        raise ProtocolError(CloseCode.BAD_REQUEST, "BroadcastStateless is server-internal; send Stateless")
    raise ProtocolError(CloseCode.BAD_REQUEST, f"unknown message type {msg_type}")


# -- encoding (bodies: a channel's peer puts the address in front) -----------------------------


def address_prefix(address: str) -> bytes:
    return write_var_bytes(address.encode())


def _string_body(msg_type: int, sub: int | None, text: str) -> bytes:
    head = bytes((msg_type,)) if sub is None else bytes((msg_type, sub))
    return head + write_var_bytes(text.encode())


def encode_authenticated(read_only: bool) -> bytes:
    return _string_body(MSG_AUTH, AUTH_AUTHENTICATED, SCOPE_READONLY if read_only else SCOPE_READ_WRITE)


def encode_permission_denied(reason: str) -> bytes:
    return _string_body(MSG_AUTH, AUTH_PERMISSION_DENIED, reason)


def encode_stateless(payload: str) -> bytes:
    return _string_body(MSG_STATELESS, None, payload)


def encode_close(reason: str) -> bytes:
    return _string_body(MSG_CLOSE, None, reason)


def encode_sync_status(applied: bool) -> bytes:
    return _SYNC_STATUS_APPLIED if applied else _SYNC_STATUS_REFUSED


class HocuspocusConnection(Connection):
    """A document on a Hocuspocus socket: edits are acknowledged, stateless messages arrive.

    The room calls `edit_refused` synchronously and `edits_durable(n)` once the write-ahead has
    committed them (the hub hands each group commit to its rooms), so `unsyncedChanges == 0` on
    the client means stored, not merely received
    (Hocuspocus acknowledges on receipt, before its debounced store)."""

    __slots__ = ()

    acknowledges = True

    def edit_refused(self, known: Callable[[bool], bool] | None) -> None:
        # A read-only client's sync step 2 that brings nothing new is acknowledged (as Hocuspocus
        # does), so a viewer that edited nothing is not left with a change it cannot get rid of.
        # The thorough check copies the document: once per connection.
        applied = known is not None and known(not self.denied_sent)
        if known is not None:
            self.denied_sent = True
        self.send(encode_sync_status(applied))

    def edits_durable(self, count: int) -> None:
        for _ in range(count):
            self.send(_SYNC_STATUS_APPLIED)

    def send_stateless(self, payload: str) -> None:
        self.send(encode_stateless(payload))
