"""Tests for event validation: every bad field is named, by index in a batch."""

import math

import pytest

from covisit.core.events import (
    DEFAULT_EVENT_WEIGHTS,
    MAX_ID_BYTES,
    Event,
    InvalidEvent,
    check_event,
    check_events,
)

W = DEFAULT_EVENT_WEIGHTS


def ev(**changes) -> Event:
    fields = {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": 1000.0,
              "session_id": None}
    fields.update(changes)
    return Event(**fields)


def test_max_id_bytes_is_256():
    assert MAX_ID_BYTES == 256


@pytest.mark.parametrize("event", [
    ev(),
    ev(event_type="purchase", timestamp=0),  # int timestamp and epoch 0 are fine
    ev(session_id="s1"),
    ev(session_id=""),
    ev(session_id=None),
    ev(user_id="é" * 128, item_id="x" * 256),  # exactly 256 bytes
    ev(item_id="商品-1", user_id="ユーザー"),
])
def test_valid_events_pass(event):
    check_event(event, W)
    check_events([event, event], W)


@pytest.mark.parametrize("field, value, fragment", [
    ("user_id", "", "got 0"),
    ("item_id", "", "got 0"),
    ("item_id", "x" * 257, "got 257"),
    ("item_id", "é" * 129, "got 258"),  # 129 characters but 258 bytes
    ("user_id", "é" * 129, "got 258"),
    ("session_id", "é" * 129, "got 258"),
    ("item_id", "a\ud800b", "not valid UTF-8"),  # lone surrogate
    ("user_id", "\udfff", "not valid UTF-8"),
    ("session_id", "s\ud83d", "not valid UTF-8"),
    ("user_id", 42, "must be a string, got int"),
    ("item_id", b"i1", "must be a string, got bytes"),
    ("user_id", None, "must be a string, got NoneType"),
    ("session_id", 7, "must be a string, got int"),
])
def test_bad_ids_name_the_field(field, value, fragment):
    with pytest.raises(InvalidEvent) as info:
        check_event(ev(**{field: value}), W)
    err = info.value
    assert err.field == field
    assert err.index is None
    assert str(err).startswith(f"{field}: ")
    assert fragment in str(err)


def test_id_length_counts_bytes_not_characters():
    check_event(ev(item_id="é" * 128), W)  # 128 chars, 256 bytes
    with pytest.raises(InvalidEvent, match="item_id"):
        check_event(ev(item_id="é" * 129), W)  # 129 chars, 258 bytes
    with pytest.raises(InvalidEvent, match="item_id"):
        check_event(ev(item_id="€" * 86), W)  # 86 chars, 258 bytes
    check_event(ev(item_id="x" * 256), W)


def test_unknown_event_type_lists_known_types():
    with pytest.raises(InvalidEvent) as info:
        check_event(ev(event_type="like"), W)
    err = info.value
    assert err.field == "event_type"
    msg = str(err)
    assert msg.startswith("event_type: ")
    assert "'like'" in msg
    for known in W:
        assert known in msg


def test_event_type_checked_against_given_weights():
    check_event(ev(event_type="like"), {"like": 1.0})
    with pytest.raises(InvalidEvent, match="known: like"):
        check_event(ev(event_type="view"), {"like": 1.0})


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf, -1.0, -1, True, False, "1000",
                                None, 10**400])
def test_bad_timestamps(ts):
    with pytest.raises(InvalidEvent) as info:
        check_event(ev(timestamp=ts), W)
    assert info.value.field == "timestamp"
    assert str(info.value).startswith("timestamp: ")
    assert repr(ts) in str(info.value)


def test_batch_error_names_index_and_field():
    events = [ev(), ev(item_id="i2"), ev(user_id=""), ev(item_id="")]
    with pytest.raises(InvalidEvent) as info:
        check_events(events, W)
    err = info.value
    assert err.field == "user_id"
    assert err.index == 2  # the first bad event rejects the batch
    assert str(err).startswith("events[2].user_id: ")


@pytest.mark.parametrize("index, bad, field", [
    (0, ev(timestamp=math.nan), "timestamp"),
    (1, ev(event_type="nope"), "event_type"),
    (3, ev(session_id="\ud800"), "session_id"),
])
def test_batch_index_for_each_field(index, bad, field):
    events = [ev() for _ in range(4)]
    events[index] = bad
    with pytest.raises(InvalidEvent) as info:
        check_events(events, W)
    assert (info.value.field, info.value.index) == (field, index)
    assert f"events[{index}].{field}:" in str(info.value)


def test_empty_batch_is_fine():
    check_events([], W)


def test_invalid_event_is_a_value_error():
    assert issubclass(InvalidEvent, ValueError)


def test_first_bad_field_wins():
    with pytest.raises(InvalidEvent) as info:
        check_event(ev(user_id="", item_id="", timestamp=math.nan), W)
    assert info.value.field == "user_id"


def test_sequence_key_prefers_session():
    assert ev(user_id="u", session_id="s").sequence_key() == "s:s"
    assert ev(user_id="u", session_id=None).sequence_key() == "u:u"
    assert ev(user_id="u", session_id="").sequence_key() == "u:u"


def test_sequence_keys_of_sessions_and_users_do_not_collide():
    # a user named like a session must not share a sequence with that session
    assert ev(user_id="x").sequence_key() != ev(user_id="y", session_id="x").sequence_key()


def test_unhashable_event_type_is_an_invalid_event():
    with pytest.raises(InvalidEvent) as info:
        check_event(ev(event_type=["view"]), W)
    assert info.value.field == "event_type"
