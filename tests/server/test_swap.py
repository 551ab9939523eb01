"""Swap test: under a steady Recommend load, 200 consecutive publishes plus 20 rollbacks/resumes
cause zero failed requests, and every response's model_version is one that was SERVING at that
moment.

The real server runs in-process on a loopback port and learns every event at once
(``learning.min_events`` 1). Reader threads call RecommendItems in a loop through the real client
while a driver records small event batches, waits for each publish, and now and then rolls back
to a kept version and resumes learning.

What "SERVING at that moment" means here. The learner records every assignment of its serving
reference in ``serving_history`` as ``(r_i, v_i)``: version ``v_i`` is assigned at some moment
``a_i`` and ``r_i = time.monotonic()`` is read just after, under the same lock, so
``a_i <= r_i < a_{i+1} <= r_{i+1}`` (assignments are serialized, and ``time.monotonic`` never
goes back). ``v_i`` serves from ``a_i`` until ``a_{i+1}``. A request that reads the reference
at ``t`` with ``t_sent <= t <= t_done`` (both read by the reader around the call, on the same
clock, since the server runs in this process) and gets ``v_i`` therefore satisfies

    r_{i-1} <= a_i <= t <= t_done       and       t_sent <= t < a_{i+1} <= r_{i+1}

(with ``r_{-1} = -inf`` and ``r_n = +inf`` past the last entry). So the rule checked is: some
history entry ``i`` with ``v_i == v`` has ``r_{i-1} <= t_done`` and ``r_{i+1} >= t_sent``. Put
the other way round, ``v`` must be the version assigned at the last entry at or before
``t_sent``, one assigned inside ``(t_sent, t_done]``, or the one assigned at the first entry
after ``t_done`` (its assignment may precede its recorded time). A version that never served,
or that was replaced by an entry recorded before ``t_sent``, fails. A rolled-back version has
one entry per time it served; each is an interval of its own.
"""

from __future__ import annotations

import random
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass

import grpc

from covisit.client import CovisitClient, Event
from tests.server.serving import TOKEN, start

PUBLISHES = 200  # incremental publishes the driver causes
PIN_CYCLES = 20  # rollback -> resume pairs, spread evenly over the publishes
READERS = 3
READ_TIMEOUT = 5.0  # deadline of one RecommendItems call
STEP_TIMEOUT = 5.0  # how long one publish may take to show up before the test fails
RUN_TIMEOUT = 60.0  # the whole driver run; the readers stop with it


@dataclass(frozen=True)
class Call:
    t_sent: float
    t_done: float
    version: str  # "" when the call failed
    error: str  # "" when it succeeded


def read_loop(target: str, reader: int, stop: threading.Event, out: list[Call]) -> None:
    """RecommendItems until `stop` (or RUN_TIMEOUT): by context, and every third call by user."""
    deadline = time.monotonic() + RUN_TIMEOUT + 10
    with CovisitClient(target, timeout=READ_TIMEOUT) as client:
        n = 0
        while not stop.is_set() and time.monotonic() < deadline and n < 1_000_000:
            n += 1
            user = f"u{(reader * 7 + n) % 60}" if n % 3 == 0 else ""
            t_sent = time.monotonic()
            try:
                version = client.recommend_items(["a"], user_id=user, k=5).model_version
                error = ""
            except grpc.RpcError as exc:
                version, error = "", f"{exc.code()}: {exc.details()}"
            except Exception as exc:  # anything else a call may raise is a failure too
                version, error = "", f"{type(exc).__name__}: {exc}"
            out.append(Call(t_sent, time.monotonic(), version, error))


def wait_for(check, what: str, timeout: float = STEP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"still not {what} after {timeout:.0f}s"
        time.sleep(0.001)
    return value


def drive(client: CovisitClient, learner, rng: random.Random) -> dict:
    """Cause PUBLISHES publishes, one event batch each, with PIN_CYCLES rollback -> resume pairs
    spread among them. Returns counts of what it did."""
    done = {"publishes": 0, "rollbacks": 0, "resumes": 0}
    every = PUBLISHES // PIN_CYCLES
    deadline = time.monotonic() + RUN_TIMEOUT
    for step in range(PUBLISHES):
        assert time.monotonic() < deadline, f"the driver ran out of time after {done}"
        before = learner.serving.version
        t = time.time() - 60
        batch = [Event(f"d{step}", item, "view", t + n, f"d{step}")
                 for n, item in enumerate(["a", f"n{step}", f"n{step // 2}"][:rng.randint(1, 3)])]
        assert client.record_events(batch) == len(batch)
        wait_for(lambda: learner.serving.version != before, f"published after step {step}")
        done["publishes"] += 1

        if step % every == every - 1:
            serving = learner.serving.version
            kept = [v.version for v in client.list_model_versions()
                    if v.state == "AVAILABLE" and int(v.version) != serving]
            assert kept, f"no AVAILABLE version to roll back to at step {step}"
            target = rng.choice(kept)
            rolled = client.rollback_model(target)
            assert (rolled.serving_version, rolled.previous_version) == (target, str(serving))
            done["rollbacks"] += 1
            # pinned: events are logged, not learned
            client.record_events([Event(f"p{step}", "a", "view", t + 5, f"p{step}")])
            time.sleep(0.02)
            assert (learner.serving.version, learner.pinned) == (int(target), int(target))
            resumed = client.resume_learning(timeout=30)
            assert learner.pinned is None and int(resumed.serving_version) > serving
            done["resumes"] += 1
    return done


def served_at_some_moment(history: list[tuple[float, int]], call: Call) -> bool:
    """The rule of the module docstring: an entry i of `call`'s version with
    r_{i-1} <= t_done and r_{i+1} >= t_sent."""
    version = int(call.version)
    last = len(history) - 1
    for i, (_, v) in enumerate(history):
        if v != version:
            continue
        started_before_done = i == 0 or history[i - 1][0] <= call.t_done
        ended_after_sent = i == last or history[i + 1][0] >= call.t_sent
        if started_before_done and ended_after_sent:
            return True
    return False


def test_swaps_under_load_fail_no_request_and_serve_only_serving_versions(tmp_path):
    server, port = start(tmp_path, **{"learning.min_events": 1, "learning.max_delay_seconds": 0.01, "learning.min_publish_interval_seconds": 0.0,
                                      "server.max_workers": 8})
    target = f"127.0.0.1:{port}"
    learner = server.engine.learner
    stop = threading.Event()
    calls: list[list[Call]] = [[] for _ in range(READERS)]
    readers = [threading.Thread(target=read_loop, args=(target, r, stop, calls[r]), daemon=True)
               for r in range(READERS)]
    try:
        with CovisitClient(target, timeout=10, admin_token=TOKEN) as admin:
            for r in readers:
                r.start()
            wait_for(lambda: all(calls), "answered by every reader")
            run_start = time.monotonic()
            try:
                done = drive(admin, learner, random.Random(7))
            finally:
                run_end = time.monotonic()
                time.sleep(0.05)  # some load after the last swap too
                stop.set()
                for r in readers:
                    r.join(READ_TIMEOUT + 5)
        assert not any(r.is_alive() for r in readers), "a reader did not stop"
        history = list(learner.serving_history)  # the learner is idle now: nothing is pending
    finally:
        stop.set()
        server.stop(0)

    assert done == {"publishes": PUBLISHES, "rollbacks": PIN_CYCLES, "resumes": PIN_CYCLES}
    everything = [c for per_reader in calls for c in per_reader]
    failed = [c for c in everything if c.error]
    assert not failed, f"{len(failed)} of {len(everything)} requests failed, e.g. {failed[:3]}"

    # the history: new versions only go up; the rollbacks re-serve old ones
    assert len(history) < learner.serving_history.maxlen, "the history dropped entries"
    assert [t for t, _ in history] == sorted(t for t, _ in history)
    seen: set[int] = set()
    published = reserved = 0
    for t, v in history:
        if v in seen:
            reserved += run_start <= t <= run_end
        else:
            assert not seen or v > max(seen), f"new version {v} after {max(seen)}"
            published += run_start <= t <= run_end
        seen.add(v)
    # PUBLISHES incremental publishes plus a full build per resume, and one entry per rollback
    assert published >= PUBLISHES + PIN_CYCLES
    assert reserved == PIN_CYCLES

    wrong = [c for c in everything if not served_at_some_moment(history, c)]
    assert not wrong, (f"{len(wrong)} of {len(everything)} responses carry a version that was not serving "
                       f"while they were in flight, e.g. {wrong[:3]}; history near the first: "
                       f"{history[max(0, bisect_left(history, (wrong[0].t_sent,)) - 2):][:6]}")

    # the load was steady: every reader kept answering, across many versions
    during = [c for c in everything if run_start <= c.t_sent <= run_end]
    assert all(any(run_start <= c.t_sent <= run_end for c in per_reader) for per_reader in calls)
    assert len({c.version for c in during}) >= (PUBLISHES + PIN_CYCLES) // 4
    print(f"\n{len(everything)} requests, {len(during)} during {run_end - run_start:.1f}s of swaps; "
          f"{published} publishes and {reserved} rollbacks in that time; "
          f"{len({c.version for c in during})} versions answered; slowest call "
          f"{max(c.t_done - c.t_sent for c in everything) * 1000:.0f} ms")


def test_the_rule_accepts_exactly_the_versions_that_may_have_served_during_a_call():
    # v1 recorded at 10, v2 at 20, v3 at 30, v1 again (a rollback) at 40
    history = [(10.0, 1), (20.0, 2), (30.0, 3), (40.0, 1)]

    def ok(t_sent: float, t_done: float) -> set[int]:
        return {v for v in (1, 2, 3, 4) if served_at_some_moment(history, Call(t_sent, t_done, str(v), ""))}

    assert ok(22, 23) == {2, 3}  # v2 serves; v3 may have been assigned already (recorded at 30)
    assert ok(20, 20) == {1, 2, 3}  # v2's assignment may follow the read; v3's may precede t_done
    assert ok(25, 35) == {2, 3, 1}  # v3 assigned inside; v1 again (recorded at 40) may precede t_done
    assert ok(31, 32) == {3, 1}  # v2 was replaced by an entry recorded before t_sent
    assert ok(41, 50) == {1}  # the last entry serves on
    assert ok(5, 6) == {1}  # before the first entry only its version can answer
    assert ok(11, 12) == {1, 2}  # v3 cannot: v2, before it, was recorded after t_done
