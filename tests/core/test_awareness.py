"""Awareness bookkeeping: clocks as y-protocols applies them, ownership, JSON validation."""

import pytest

from collab_server.core.awareness import RoomAwareness, decode_entries, encode_entries
from collab_server.core.protocol import CloseCode, ProtocolError


class Owner:
    def __init__(self, user: str) -> None:
        self.user = user


def same_user(owner: Owner):  # type: ignore[no-untyped-def]
    return lambda other: other.user == owner.user


def test_apply_relays_verbatim_and_tracks_owner() -> None:
    aw = RoomAwareness()
    a = Owner("u1")
    update = encode_entries([(1, 1, b'{"cursor":3}')])
    change = aw.apply(update, a, same_user(a))
    assert change.relay == update
    assert change.states == {1: {"cursor": 3}}
    assert aw.owned_by(a) == {1: {"cursor": 3}}
    assert decode_entries(aw.encode_all() or b"") == [(1, 1, b'{"cursor":3}')]


def test_stale_clock_is_ignored_and_newer_wins() -> None:
    aw = RoomAwareness()
    a = Owner("u1")
    aw.apply(encode_entries([(1, 5, b"{}")]), a, same_user(a))
    assert aw.apply(encode_entries([(1, 4, b'{"x":1}')]), a, same_user(a)).relay is None
    assert aw.apply(encode_entries([(1, 6, b'{"x":2}')]), a, same_user(a)).states == {1: {"x": 2}}


def test_invalid_json_entry_is_dropped_and_the_rest_relayed() -> None:
    aw = RoomAwareness()
    a = Owner("u1")
    change = aw.apply(encode_entries([(1, 1, b"{not json"), (2, 1, b'{"ok":true}')]), a, same_user(a))
    assert change.dropped == 1
    assert decode_entries(change.relay or b"") == [(2, 1, b'{"ok":true}')]
    assert 1 not in aw.states()


def test_other_users_cannot_overwrite_a_client_id() -> None:
    aw = RoomAwareness()
    a, b = Owner("u1"), Owner("u2")
    aw.apply(encode_entries([(1, 1, b'{"name":"a"}')]), a, same_user(b))
    change = aw.apply(encode_entries([(1, 2, b'{"name":"mallory"}')]), b, same_user(b))
    assert change.relay is None and change.dropped == 1
    assert aw.states() == {1: {"name": "a"}}


def test_remove_owner_bumps_clock_and_forgets_only_its_clients() -> None:
    aw = RoomAwareness()
    a, b = Owner("u1"), Owner("u2")
    aw.apply(encode_entries([(1, 3, b"{}"), (2, 1, b"{}")]), a, same_user(a))
    aw.apply(encode_entries([(9, 1, b"{}")]), b, same_user(b))
    removal = aw.remove_owner(a)
    assert sorted(decode_entries(removal or b"")) == [(1, 4, b"null"), (2, 2, b"null")]
    assert set(aw.states()) == {9}
    assert aw.remove_owner(a) is None
    assert len(aw) == 1


def _many(first: int, count: int, clock: int = 1, state: bytes = b'{"u":1}') -> bytes:
    return encode_entries([(cid, clock, state) for cid in range(first, first + count)])


def test_a_connection_announcing_too_many_client_ids_is_refused() -> None:
    aw = RoomAwareness(max_per_owner=4)
    owner, other = object(), object()
    aw.apply(_many(1, 4), owner, lambda _o: False)
    aw.apply(_many(1, 4, clock=2), owner, lambda _o: False)  # updating its own four is fine
    with pytest.raises(ProtocolError) as err:
        aw.apply(_many(100, 1), owner, lambda _o: False)
    assert err.value.code == CloseCode.POLICY_VIOLATION and "more than 4 awareness client IDs" in err.value.reason
    aw.apply(_many(200, 4), other, lambda _o: False)  # the cap is per connection
    # Another process speaks for many clients: it is not held to the cap.
    aw.apply(_many(300, 50), object(), lambda _o: True, limited=False)
    # A client that announced itself gone frees its slot.
    aw.apply(encode_entries([(1, 3, b"null")]), owner, lambda _o: False)
    aw.apply(_many(400, 1), owner, lambda _o: False)


def test_tombstones_of_clients_that_left_are_bounded() -> None:
    aw = RoomAwareness(max_per_owner=1000, max_tombstones=100)
    for batch in range(10):  # 10 connections of 500 client IDs each come and go
        owner = object()
        aw.apply(_many(batch * 1000, 500), owner, lambda _o: False)
        aw.remove_owner(owner)
    assert len(aw) == 0
    assert len(aw._entries) == 100  # only the newest tombstones are kept
    # The newest keep ordering late, stale updates away.
    assert aw.apply(_many(9499, 1, clock=1), object(), lambda _o: True).relay is None
