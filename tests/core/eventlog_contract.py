"""What every `EventLog` implementation promises, as checks each implementation's tests run
on a fresh, empty log of their kind."""

import threading

import pytest

from covisit.core.events import Event


def ev(k: int) -> Event:
    """The event the tests put at offset k: ids and session vary with k."""
    return Event(f"u{k % 7}", f"item-{k}", "view", 1000.0 + k, None if k % 2 else f"s{k % 3}")


def check_round_trip_keeps_every_field(log) -> None:
    events = [
        Event("u1", "i1", "view", 1.5),
        Event("ユーザー", "商品-42", "click", 1700000000.123456, "séance-☃"),
        Event("u\U0001F600", "i\u00e9", "purchase", 0.0, None),
        Event("u2", "i2", "add_to_cart", 2.0, ""),  # an empty session stays empty, not None
        Event("x" * 256, "y" * 256, "view", 3.0, "z" * 256),
    ]
    assert log.append(events) == len(events)
    got = log.read(0)
    assert got == list(enumerate(events))
    assert [type(e.session_id) for _, e in got] == [type(e.session_id) for e in events]


def check_offsets_and_reads_from_the_middle(log) -> None:
    assert log.durable_offset == 0
    assert log.read(0) == []
    assert log.append([ev(0), ev(1), ev(2)]) == 3
    assert log.append([ev(3)]) == 4
    assert log.append([]) == 4
    assert log.append([ev(k) for k in range(4, 1000)]) == 1000
    assert log.durable_offset == 1000
    assert log.read(2, 3) == [(2, ev(2)), (3, ev(3)), (4, ev(4))]
    # past the local log's sparse index's first stride, and across several strides
    assert log.read(700, 2) == [(700, ev(700)), (701, ev(701))]
    assert log.read(255, 600) == [(k, ev(k)) for k in range(255, 855)]
    assert log.read(998) == [(998, ev(998)), (999, ev(999))]
    assert log.read(1000) == []
    assert log.read(5000) == []
    assert log.read(10, 0) == []
    with pytest.raises(ValueError, match="from_offset"):
        log.read(-1)
    with pytest.raises(ValueError, match="max_events"):
        log.read(0, -1)


def run_in_threads(work, threads_n: int, timeout: float = 120) -> list[str]:
    """Run work(t) for t in range(threads_n), one thread each, at once; the errors raised."""
    errors = []

    def guarded(t):
        try:
            work(t)
        except Exception as exc:  # pragma: no cover - the callers assert there are none
            errors.append(repr(exc))

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    return errors
