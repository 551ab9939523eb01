"""The event: what a user did to an item, and the checks every event passes before it counts."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from covisit.core.errors import InvalidArgument

# The original design's weights: a purchase says more about an item than a view.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 3.0,
    "purchase": 4.0,
}
MAX_ID_BYTES = 256
DEFAULT_SESSION_GAP = 30 * 60.0  # seconds of inactivity that end a user's session


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    item_id: str
    event_type: str
    timestamp: float  # unix seconds
    session_id: str | None = None

    def sequence_key(self) -> str:
        """Which sequence the event extends: its session when given, else its user."""
        if self.session_id:
            return "s:" + self.session_id
        return "u:" + self.user_id


class InvalidEvent(InvalidArgument):
    """An event that must not be counted; `field` names the offending field."""

    def __init__(self, field: str, message: str, index: int | None = None):
        self.index = index
        super().__init__(f"events[{index}].{field}" if index is not None else field, message)
        self.field = field  # the event's own field; `path` has the index


def id_problem(value: object) -> str | None:
    """Why `value` is not a valid id (a 1..256-byte UTF-8 string), or None if it is."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if not 1 <= size <= MAX_ID_BYTES:
        return f"must be 1..{MAX_ID_BYTES} UTF-8 bytes, got {size}"
    return None


def check_id(field: str, value: object) -> None:
    """Raise InvalidArgument naming `field` unless `value` is a valid id."""
    problem = id_problem(value)
    if problem:
        raise InvalidArgument(field, problem)


def _check_id(field: str, value: object, index: int | None, optional: bool = False) -> None:
    if optional and (value is None or value == ""):
        return
    problem = id_problem(value)
    if problem:
        raise InvalidEvent(field, problem, index)


def check_event(event: Event, event_weights: dict[str, float], index: int | None = None) -> None:
    """Raise InvalidEvent naming the first bad field of `event`."""
    _check_id("user_id", event.user_id, index)
    _check_id("item_id", event.item_id, index)
    if not isinstance(event.event_type, str) or event.event_type not in event_weights:
        known = ", ".join(sorted(event_weights))
        raise InvalidEvent("event_type", f"unknown type {event.event_type!r} (known: {known})", index)
    ts = event.timestamp
    if isinstance(ts, bool) or not isinstance(ts, numbers.Real) or not _finite_nonnegative(ts):
        raise InvalidEvent("timestamp", f"must be finite unix seconds >= 0, got {ts!r}", index)
    _check_id("session_id", event.session_id, index, optional=True)


def _finite_nonnegative(x: numbers.Real) -> bool:
    try:
        return math.isfinite(x) and x >= 0
    except OverflowError:  # an int too large for a float
        return False


def check_events(events: list[Event], event_weights: dict[str, float]) -> None:
    """Check a whole batch; the first bad event rejects it, named by index and field."""
    for i, event in enumerate(events):
        check_event(event, event_weights, i)
