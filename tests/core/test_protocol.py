"""Strict y-protocols framing: every malformed frame raises the close code we promise."""

import pytest
from pycrdt import (
    Doc,
    Text,
    create_awareness_message,
    create_sync_message,
    create_update_message,
)

from collab_server.core.protocol import (
    CloseCode,
    Kind,
    ProtocolError,
    decode,
    encode_awareness,
    encode_permission_denied,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
    read_varuint,
    write_varuint,
)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**53 - 1, 2**63, 2**64 - 1])
def test_varuint_round_trip(value: int) -> None:
    encoded = write_varuint(value)
    assert read_varuint(encoded, 0) == (value, len(encoded))


def test_varuint_over_64_bits_is_rejected() -> None:
    with pytest.raises(ProtocolError) as err:
        read_varuint(write_varuint(2**64), 0)
    assert err.value.code == CloseCode.BAD_REQUEST
    with pytest.raises(ProtocolError):
        read_varuint(b"\xff" * 11, 0)


def test_encoders_match_pycrdt() -> None:
    doc = Doc()
    doc.get("content", type=Text).insert(0, "hi")
    update = doc.get_update()
    assert encode_update(update) == create_update_message(update)
    assert encode_sync_step1(doc.get_state()) == create_sync_message(doc)
    assert encode_awareness(b"\x00") == create_awareness_message(b"\x00")


def test_decode_each_kind() -> None:
    assert decode(encode_sync_step1(b"\x00")) .kind is Kind.SYNC_STEP1
    assert decode(encode_sync_step2(b"\x00\x00")).kind is Kind.SYNC_STEP2
    assert decode(encode_update(b"\x00\x00")).payload == b"\x00\x00"
    assert decode(encode_awareness(b"\x00")).kind is Kind.AWARENESS
    assert decode(b"\x03").kind is Kind.QUERY_AWARENESS
    assert decode(encode_permission_denied("no")).payload == b"no"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "empty frame"),
        (b"\x07", "unknown message type 7"),
        (b"\x00\x05\x00", "unknown sync message type 5"),
        (b"\x00\x02\x80", "truncated varint"),
        (b"\x00\x02\x05ab", "length past the end of the frame"),
        (b"\x00\x02" + b"\xff" * 10 + b"\x01", "varint over 64 bits"),
        (b"\x00\x02\x01aX", "trailing bytes after the message"),
        (b"\x03\x00", "trailing bytes after the message"),
    ],
)
def test_malformed_frames(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode(frame)
    assert err.value.code == CloseCode.BAD_REQUEST
    assert err.value.reason == reason
