"""Awareness bookkeeping: clocks as y-protocols applies them, ownership, JSON validation."""

from collab_server.core.awareness import RoomAwareness, decode_entries, encode_entries


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
