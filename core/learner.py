"""Continuous learning: a background thread tails the event log into the exact counts and
publishes serving snapshots; it also owns versions, checkpoints, the quality gate and pins.

Requests read `serving` (one reference) and nothing else of this module's state. Every change
of `serving` is one assignment made under `_lock`, so a request sees a whole old snapshot or a
whole new one. Only the learner thread touches the model; admin calls (rollback, resume,
promote, rebuild) take `_lock` and leave work for the thread where it needs the model.

A *line* is a full snapshot plus the incremental snapshots published on top of it; feedback is
attributed per line (`meta["line"]`), since an incremental version lives about a second.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

from covisit.core import checkpoints as ck
from covisit.core.config import ModelConfig
from covisit.core.durable import write_durably
from covisit.core.errors import FailedPrecondition, NotFound
from covisit.core.eventlog import EventLog, EventLogError
from covisit.core.gate import GateRun, Predictions
from covisit.core.model import CoVisitModel
from covisit.core.snapshot import Snapshot

log = logging.getLogger(__name__)
# Recent incremental snapshots kept in memory as rollback targets, besides line heads and
# checkpoints. They share a pool of rows with the serving one, but each holds its own row
# bounds and popularity arrays (28 MB at 1M items), and an old pool stays alive while they do.
KEPT_VERSIONS = 3
KEPT_RECORDS = 200  # states of versions no longer kept (RETIRED, REJECTED), for reports
READ_BATCH = 100_000  # events read from the log per model update
VERSION_BLOCK = 1000  # version numbers reserved on disk at a time, so they never repeat
LOG_RETRY_SECONDS = 1.0  # between attempts to reach a shared event log that is out of reach
BUILDING, AVAILABLE, SERVING, SHADOW, CANDIDATE, REJECTED, RETIRED = (
    "BUILDING", ck.AVAILABLE, ck.SERVING, ck.SHADOW, ck.CANDIDATE, ck.REJECTED, ck.RETIRED)


@dataclass(frozen=True)
class VersionInfo:
    version: int
    parent: int | None
    state: str
    reason: str
    created_at: float
    watermark: int
    items: int
    links: int
    metrics: dict


def _yield_to_requests() -> None:
    """Run the calling (learner) thread at Linux's idle priority: it gets a core only when no
    request thread wants it (on 2 cores, normal priority took the bundled model's Recommend
    p99 to 3.3x idle; idle priority, 1.6x). Under full CPU load, freshness yields instead. A
    waiting request thread sleeps, so a learner holding the GIL is scheduled again at once."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux: normal priority
        log.info("learner keeps normal priority (%s)", exc)


def line_of(snap: Snapshot) -> int:
    return int(snap.meta.get("line", snap.version))


def log_offset(snap: Snapshot) -> int:
    """The event-log offset a snapshot reflects (its model may have counted events from
    elsewhere too, e.g. an offline build it started from)."""
    return int(snap.meta.get("log_offset", snap.watermark))


def _candidate_reason(snap: Snapshot) -> str:
    return "waiting for the quality gate; built: " + str(snap.meta.get("reason", ""))


class Learner:
    """`learning` is the server's [learning] config section. `directory` (None: nothing is
    persisted) holds the checkpoints and the learner's small state file."""

    def __init__(self, model_config: ModelConfig, learning, event_log: EventLog,
                 directory: str | os.PathLike | None = None, clock=time.time):
        self.model_config, self.learning, self.event_log, self.clock = model_config, learning, event_log, clock
        self.directory = Path(directory) if directory is not None else None
        self.checkpoints = (ck.CheckpointStore(self.directory / "checkpoints", keep=learning.checkpoints_kept)
                            if self.directory is not None else None)
        self.serving: Snapshot | None = None  # the one reference requests read
        self.pinned: int | None = None
        self.state = "starting"  # starting, replaying, learning, pinned, failed
        self.error = ""  # why the learner stopped, when it failed
        self.previous_line: int | None = None  # the line that served before the serving one
        self.publishes = 0
        self.serving_history: deque[tuple[float, int]] = deque(maxlen=10_000)  # (monotonic, version)
        self._model = CoVisitModel(model_config, threads=1)  # serving shares the cores
        self._applied = 0  # log offset the model reflects
        self._newest_event = 0.0  # timestamp of the newest event the model reflects
        self._recent: OrderedDict[int, Snapshot] = OrderedDict()
        self._lines: dict[int, Snapshot] = {}  # full snapshots that head a line, by version
        self._records: OrderedDict[int, tuple[str, str, VersionInfo | None]] = OrderedDict()
        self._candidate: tuple[Snapshot, GateRun] | None = None
        self._promoted: Snapshot | None = None  # a candidate that passed: the next publish's base
        self._predictions = Predictions(max_context=model_config.max_context)
        self._next_version = 1
        self._reserved = 0
        self._lock = threading.Lock()  # guards serving, pins, versions and the flags below
        self._state_lock = threading.RLock()  # version numbers and the state file; inside _lock
        self._wake = threading.Condition(self._lock)
        self._pending_since: float | None = None
        self._rebuild_reason: str | None = None
        self._rebuild_done: list[tuple[Future, object]] = []  # admin calls waiting for a step
        self._resume_requested = False
        self._last_full = time.monotonic()
        self._last_step = 0.0  # when the last step started (publishes are spaced from it)
        self._building: int | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self.on_serving = lambda: None  # called once the first snapshot serves
        self.on_build = lambda kind, seconds: None  # each snapshot built ("full" or "incremental")
        self.on_swap = lambda seconds: None  # each incremental publish: built to serving (lock wait included)
        # In a fleet (core.fleet) only the leader runs full builds of its own accord, gates and
        # checkpoints; the others follow its lines. Alone, a learner leads.
        self.leading = lambda: True
        self.leader_name = lambda: ""
        self.on_line = lambda version: None  # under _lock: a new line serves
        self.on_checkpoint = lambda version: None  # a checkpoint was saved
        self.reserve_versions = None  # (count) -> first of that many version numbers, fleet-wide
        self.serve_early = True  # on_serving as soon as a checkpoint serves, before the replay
        self._announced = False
        self._follow: int | None = None  # the leader's line to re-prune into, at the next step

    # ---- running ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="covisit-learner", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()

    def notify(self) -> None:
        """Events were appended to the log."""
        with self._lock:
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            if self.pending() >= self.learning.min_events:
                self._wake.notify_all()

    def pending(self) -> int:
        return max(0, self.event_log.durable_offset - self._applied)

    def waited_seconds(self) -> float:
        """How long logged events have waited to be learned (0 when none wait): the staleness
        an operator can act on, unlike the age of the newest event, which grows when no events
        come."""
        since = self._pending_since
        return time.monotonic() - since if since is not None and self.pending() else 0.0

    def wait_learned(self, timeout: float = 30.0) -> bool:
        """Wait until the serving model reflects the log as it ends now; False on timeout, or
        at once when pinned."""
        target = self.event_log.durable_offset
        deadline = time.monotonic() + timeout
        with self._lock:
            self._wake.notify_all()
            while (self.serving is None or log_offset(self.serving) < target) and self.pinned is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.state == "failed":
                    return False
                self._pending_since = self._pending_since or time.monotonic() - self.learning.max_delay_seconds
                self._wake.wait(min(left, 0.05))
        return self.pinned is None

    def _run(self) -> None:
        try:
            _yield_to_requests()
            self._load()
            while True:
                try:
                    with self._lock:
                        if not self._wait_for_work():
                            return
                    self._step()
                except EventLogError as exc:  # a shared log out of reach: the model keeps serving
                    log.warning("the event log is out of reach (%s); trying again in %.0f s", exc, LOG_RETRY_SECONDS)
                    with self._lock:
                        self._wake.wait(LOG_RETRY_SECONDS)
        except Exception as exc:
            log.exception("the learner stopped")
            with self._lock:
                self.state = "failed"
                self.error = f"{type(exc).__name__}: {exc}"
                self._wake.notify_all()

    def _wait_for_work(self) -> bool:
        """Under _lock: block until a trigger fires; False when stopping."""
        cfg = self.learning
        while not self._stop:
            if self._rebuild_reason or self._resume_requested or self._rebuild_done:
                return True
            if self.pinned is None:
                pending = self.pending()
                if pending >= cfg.min_events:
                    rest = cfg.min_publish_interval_seconds - (time.monotonic() - self._last_step)
                    if rest <= 0:
                        return True
                    self._wake.wait(rest)  # a burst of writes: coalesce into fewer publishes
                    continue
                if time.monotonic() - self._last_full >= cfg.full_rebuild_seconds and self.leading():
                    self._rebuild_reason = "periodic"
                    return True
                if pending:
                    self._pending_since = self._pending_since or time.monotonic()
                    wait = cfg.max_delay_seconds - (time.monotonic() - self._pending_since)
                    if wait <= 0:
                        return True
                    self._wake.wait(min(wait, 0.5))
                    continue
            self._wake.wait(0.2)  # also polls the log for appends from elsewhere
        return False

    # ---- starting ----------------------------------------------------------------------------
    def _patiently(self, call):
        """call(), again every LOG_RETRY_SECONDS while a shared log is out of reach (at start,
        there is no model to keep serving meanwhile, but one will come)."""
        while True:
            try:
                return call()
            except EventLogError as exc:
                log.warning("the event log is out of reach (%s); trying again in %.0f s", exc, LOG_RETRY_SECONDS)
                with self._lock:
                    if self._stop:
                        raise
                    self._wake.wait(LOG_RETRY_SECONDS)

    def _load(self) -> None:
        """Newest good checkpoint (serving at once), then the log after its watermark."""
        state = self._read_state()
        end = self._patiently(lambda: self.event_log.durable_offset)
        on_disk = max((c.version for c in self.checkpoints.list()), default=0) if self.checkpoints else 0
        self._reserved = max(state.get("reserved_versions", 0), on_disk)  # e.g. checkpoints restored
        self._next_version = self._reserved + 1
        # a checkpoint past the log's end counted events a damaged tail took: an older one (or
        # the whole log) keeps the model equal to what the log holds
        found = self.checkpoints.newest_loadable(self.model_config, max_watermark=end) if self.checkpoints else None
        if found is not None:
            info, snap, model = found
            model.threads = 1
            model.adopt(snap)  # saved together: the next publish re-prunes only what changes
            self._model, self._applied = model, info.event_watermark
            self._newest_event = snap.meta.get("newest_event", 0.0)
            with self._lock:
                self._lines[snap.version] = snap
                self._set_serving(snap)
            log.info("serving checkpoint v%d (log offset %d); replaying the log after it",
                     snap.version, self._applied)
        elif self._patiently(lambda: self.event_log.start_offset) > 0:
            raise FailedPrecondition("the event log's first events were deleted and no checkpoint"
                                     " covers them; restore the checkpoints directory")
        pinned = state.get("pinned")
        if pinned is not None:
            snap = self._find(pinned)
            with self._lock:
                self.pinned = pinned
                self._set_serving(snap)
            log.warning("model pinned to v%d by an earlier rollback; ResumeLearning to learn again", pinned)
        with self._lock:
            self.state = "replaying"
        while self._applied < self._patiently(lambda: self.event_log.durable_offset):
            self._apply(self._patiently(lambda: self.event_log.read(self._applied, READ_BATCH)), score=False)
        with self._lock:
            self.state = "pinned" if self.pinned is not None else "learning"
        if self.pinned is None and (self.serving is None or log_offset(self.serving) != self._applied):
            if self.serving is not None and not self.leading() and self._model.can_rebase(self.serving):
                self._publish_incremental()  # a follower stays on the fleet's line
            else:
                self._full_build("start", gate=False)
        with self._lock:
            self._announce()

    # ---- the learner's step ------------------------------------------------------------------
    def _step(self) -> None:
        self._last_step = time.monotonic()
        with self._lock:  # the requests this step answers: later ones wait for the next step
            resume, self._resume_requested = self._resume_requested, False
            reason, self._rebuild_reason = self._rebuild_reason, None
            follow, self._follow = self._follow, None
            waiters, self._rebuild_done = self._rebuild_done, []
            pinned = self.pinned is not None
        built = None
        if not pinned:
            try:
                events = self.event_log.read(self._applied, READ_BATCH)
            except EventLogError as exc:  # the calls waiting on this step hear why
                for waiter, _ in waiters:
                    waiter.set_exception(exc)
                raise
            if events:
                self._apply(events, score=True)
            if resume:  # the operator's call: the full build serves at once
                built = self._full_build("resume", gate=False)
            elif follow is not None:  # counts equal the leader's: a full prune is its line now
                built = self._full_build(f"following the leader's line v{follow}", gate=False, line=follow)
            else:
                if events:  # serves now, whatever a full build below becomes
                    self._publish_incremental()
                if reason:
                    built = self._full_build(reason, gate=True)
        for waiter, then in waiters:
            try:
                waiter.set_result(then(built))
            except Exception as exc:
                waiter.set_exception(exc)

    def _apply(self, events, score: bool) -> None:
        """Count a batch of (offset, event) into the model; first, score it held-out for a
        waiting candidate (test, then train)."""
        batch = [e for _, e in events]
        predictions = self._predictions.feed(batch)
        candidate = self._candidate  # admin calls may replace it meanwhile
        if score and candidate is not None:
            candidate[1].observe(predictions)
        self._model.update(batch, checked=True)  # the engine logs checked events only
        with self._lock:
            self._applied = events[-1][0] + 1
            self._pending_since = time.monotonic() if self.pending() else None
        self._newest_event = max(self._newest_event, max(e.timestamp for e in batch))
        if candidate is not None and candidate[1].done:
            self._judge_candidate(candidate)

    def _new_version(self) -> int:
        """The next version number; blocks of them are reserved on disk so that a restart
        never reuses a number an earlier process served."""
        with self._state_lock:
            v = self._next_version
            self._next_version += 1
            if v > self._reserved:
                if self.reserve_versions is not None:  # unique in the fleet, not just here
                    v = self.reserve_versions(VERSION_BLOCK)
                    self._next_version = v + 1
                self._reserved = v + VERSION_BLOCK - 1
                self._write_state()
            return v

    def _snapshot(self, base: Snapshot | None, line: int | None = None) -> Snapshot:
        """A new version: `base` plus the rows counted since it, or a full build (base None)."""
        parent = self.serving.version if self.serving is not None else None
        version = self._new_version()
        self._building = version
        started = time.perf_counter()
        try:
            snap = self._model.snapshot(version=version, parent=parent, base=base)
        finally:
            self._building = None
        self.on_build("incremental" if base is not None else "full", time.perf_counter() - started)
        snap.meta.update(line=line if line is not None else version, newest_event=self._newest_event,
                         log_offset=self._applied)
        return snap

    def _publish_incremental(self) -> None:
        with self._lock:
            promoted, self._promoted = self._promoted, None
        base = promoted or self.serving
        if base is not None and not self._model.can_rebase(base):
            base = None
        snap = self._snapshot(base, line=line_of(base) if base is not None else None)
        started = time.perf_counter()
        with self._lock:
            if self.pinned is None:
                self._start_line(snap)
        self.on_swap(time.perf_counter() - started)

    def _full_build(self, reason: str, gate: bool, line: int | None = None) -> int:
        """Re-prune everything from the exact counts into a checkpoint; it serves at once when
        nothing else does (or the gate is off), else it waits for the gate as the candidate.
        `line`: the line the build joins (another replica's), else it heads its own."""
        started = time.perf_counter()
        snap = self._snapshot(None, line=line)
        snap.meta.update(reason=reason)
        self._last_full = time.monotonic()
        gate = gate and self.learning.gate_enabled and self.serving is not None
        # the file carries the reason too: versions() may read it before _candidate is set
        self._checkpoint(snap, CANDIDATE if gate else SERVING, _candidate_reason(snap) if gate else "")
        with self._lock:
            self._lines[snap.version] = snap
            if gate:
                if self._candidate is not None:  # a newer candidate replaces a waiting one
                    self._retire_candidate("replaced by a newer candidate")
                self._candidate = (snap, GateRun(snap, self.serving, events=self.learning.gate_events,
                                                 k=self.learning.gate_k))
            elif self.pinned is None:  # a rollback meanwhile wins
                self._start_line(snap)
        log.info("full build v%d (%s) in %.2fs: %s", snap.version, reason,
                 time.perf_counter() - started, "candidate" if gate else "serving")
        return snap.version

    def _judge_candidate(self, candidate: tuple[Snapshot, GateRun]) -> None:
        snap, run = candidate
        decision = run.decision(self.learning.gate_tolerance)
        snap.meta.update(gate_candidate_hr=decision.candidate_hr, gate_serving_hr=decision.serving_hr,
                         gate_predictions=decision.n)
        with self._lock:
            if self._candidate is not candidate:
                return  # replaced or retired meanwhile
            self._candidate = None
            if decision.passed and self.pinned is None:
                # the candidate heads a new line, which serves from the next publish: the
                # candidate plus the rows counted since it was built (it alone would be stale)
                self._promoted = snap
                self._set_state(snap.version, SERVING, decision.reason)
                log.info("gate passed v%d: %s", snap.version, decision.reason)
            else:
                self._reject(snap.version, decision.reason)
                log.warning("gate rejected v%d: %s", snap.version, decision.reason)

    def _start_line(self, snap: Snapshot) -> None:
        """Under _lock: `snap` serves; when it starts a new line, the old one becomes the
        previous line (auto-rollback's comparison and target)."""
        old = self.serving
        new_line = old is None or line_of(old) != line_of(snap)
        if old is not None and new_line:
            self.previous_line = line_of(old)
            self._set_state(self.previous_line, AVAILABLE)
        self._set_serving(snap)  # later incremental snapshots build on it
        if new_line:
            self.on_line(line_of(snap))
        # line heads still needed in memory; older ones are checkpoints, loaded again if asked for
        needed = {snap.version, line_of(snap), self.previous_line, self.pinned,
                  self._candidate[0].version if self._candidate else None}
        for version in [v for v in self._lines if v not in needed]:
            del self._lines[version]

    # ---- versions ----------------------------------------------------------------------------
    def _set_serving(self, snap: Snapshot) -> None:
        """Under _lock (or before requests): the one assignment requests see."""
        old = self.serving
        self.serving = snap
        self.publishes += 1
        self.serving_history.append((time.monotonic(), snap.version))
        if snap.version not in self._lines:
            self._recent[snap.version] = snap
            while len(self._recent) > KEPT_VERSIONS:
                gone, dropped = self._recent.popitem(last=False)
                self._record(gone, RETIRED, "older than the last %d versions" % KEPT_VERSIONS, dropped)
        self._wake.notify_all()
        if old is None and self.serve_early:
            self._announce()
        log.debug("serving v%d (was v%s)", snap.version, old.version if old else "-")

    def _announce(self) -> None:
        """Under _lock: call on_serving once a snapshot serves."""
        if not self._announced and self.serving is not None:
            self._announced = True
            self.on_serving()

    def _record(self, version: int, state: str, reason: str, snap: Snapshot | None = None) -> None:
        info = self._info(snap, state, reason) if snap is not None else None
        self._records[version] = (state, reason, info)
        self._records.move_to_end(version)
        while len(self._records) > KEPT_RECORDS:
            self._records.popitem(last=False)

    def _set_state(self, version: int, state: str, reason: str = "") -> None:
        if self.checkpoints is not None:
            try:
                self.checkpoints.set_state(version, state, reason)
            except NotFound:
                pass  # an in-memory version only

    def _reject(self, version: int, reason: str) -> None:
        snap = self._lines.pop(version, None)
        self._record(version, REJECTED, reason, snap)
        self._set_state(version, REJECTED, reason)

    def _retire_candidate(self, reason: str) -> None:
        snap, _ = self._candidate
        self._candidate = None
        self._lines.pop(snap.version, None)
        self._record(snap.version, RETIRED, reason, snap)
        self._set_state(snap.version, RETIRED, reason)

    def _checkpoint(self, snap: Snapshot, state: str, reason: str = "") -> None:
        if self.checkpoints is None or not self.leading():  # a follower starts from the leader's
            return
        started = time.perf_counter()
        self._save(snap, self._model, self._applied, state, reason)
        self.on_checkpoint(snap.version)
        with self._lock:
            protect = {v for v in (self.pinned, self.previous_line,
                                   line_of(self.serving) if self.serving else None) if v is not None}
        oldest = self.checkpoints.prune(protect=protect)
        if oldest is not None:
            self.event_log.delete_before(oldest)
        log.info("checkpoint v%d saved in %.2fs", snap.version, time.perf_counter() - started)

    def _save(self, snap: Snapshot, model: CoVisitModel | None, watermark: int, state: str,
              reason: str = "") -> None:
        self.checkpoints.save(snap, model, watermark, state=state, reason=reason,
                              metrics={"build_seconds": snap.meta.get("build_seconds", 0.0),
                                       "items": snap.n_items, "links": snap.n_links})

    def _find(self, version: int) -> Snapshot:
        """A kept snapshot: in memory, or a checkpoint on disk."""
        snap = self._recent.get(version) or self._lines.get(version)
        if snap is None and self._candidate is not None and self._candidate[0].version == version:
            snap = self._candidate[0]
        if snap is None and self.checkpoints is not None:
            try:
                snap = self.checkpoints.load_snapshot(version)
            except NotFound:
                snap = None
        if snap is None:
            raise NotFound(f"model version {version} is not kept")
        return snap

    def find(self, version: int) -> Snapshot:
        with self._lock:
            return self._find(version)

    def versions(self, experiments: dict[int, str] | None = None) -> list[VersionInfo]:
        """Every version this learner knows, newest first. `experiments` maps versions running
        as an A/B arm or in shadow to a reason (their state is SHADOW)."""
        experiments = experiments or {}
        with self._lock:
            out: dict[int, VersionInfo] = {}
            if self.checkpoints is not None:
                for c in self.checkpoints.list():
                    out[c.version] = VersionInfo(c.version, c.parent_version, c.state, c.reason, c.created_at,
                                                 c.event_watermark, int(c.metrics.get("items", 0)),
                                                 int(c.metrics.get("links", 0)), dict(c.metrics))
            for version, (state, reason, info) in self._records.items():
                if info is not None or version in out:
                    base = info or out[version]
                    out[version] = VersionInfo(**{**base.__dict__, "state": state, "reason": reason})
            for snap in [*self._recent.values(), *self._lines.values()]:
                out[snap.version] = self._info(snap, AVAILABLE, "")
            if self._candidate is not None:
                snap = self._candidate[0]
                out[snap.version] = self._info(snap, CANDIDATE, _candidate_reason(snap))
            for version, reason in experiments.items():
                if version in out:
                    out[version] = VersionInfo(**{**out[version].__dict__, "state": SHADOW, "reason": reason})
            if self.serving is not None:
                reason = "pinned by a rollback; ResumeLearning to learn again" if self.pinned else ""
                out[self.serving.version] = self._info(self.serving, SERVING, reason)
            if self._building is not None:
                out[self._building] = VersionInfo(self._building, None, BUILDING, "", self.clock(),
                                                  self._applied, 0, 0, {})
            for version, info in out.items():  # a checkpoint that stopped serving is AVAILABLE
                if info.state == SERVING and version != (self.serving and self.serving.version):
                    out[version] = VersionInfo(**{**info.__dict__, "state": AVAILABLE, "reason": ""})
        return [out[v] for v in sorted(out, reverse=True)]

    @staticmethod
    def _info(snap: Snapshot, state: str, reason: str) -> VersionInfo:
        metrics = {k: float(v) for k, v in snap.meta.items() if isinstance(v, (int, float))}
        return VersionInfo(snap.version, snap.parent, state, reason, snap.created_at, log_offset(snap),
                           snap.n_items, snap.n_links, metrics)

    # ---- admin actions -----------------------------------------------------------------------
    def rollback(self, version: int, reason: str = "rollback") -> tuple[int, int]:
        """Serve a kept version and pin it; events are still logged, not learned."""
        with self._lock:
            snap = self._find(version)
            old = self.serving.version if self.serving is not None else 0
            if self.checkpoints is not None:  # a restart must find the pinned version on disk
                try:
                    self.checkpoints.get(version)
                except NotFound:
                    self._save(snap, None, log_offset(snap), SERVING, reason)
            self.pinned = version
            self.state = "pinned"
            if self._candidate is not None:
                self._retire_candidate("a rollback pinned the model")
            self._write_state()
            self._set_serving(snap)
        log.warning("rolled back from v%d to v%d and pinned it (%s)", old, version, reason)
        return version, old

    def resume(self, timeout: float = 60.0) -> tuple[int, int]:
        """Unpin; learn what was logged meanwhile and serve a full build of it."""
        waiting = 0

        def unpin() -> None:
            nonlocal waiting
            if self.pinned is None:
                raise FailedPrecondition("the model is not pinned; nothing to resume")
            waiting = self.pending()
            self.pinned = None
            self.state = "learning"
            self._write_state()
            self._resume_requested = True
        self._next_step(unpin, timeout, "the resumed build")
        return self.serving.version, waiting

    def rebuild(self, reason: str = "requested", timeout: float = 300.0) -> int:
        """A full build now (it waits for the gate unless nothing serves); its version."""
        def ask() -> None:
            if self.pinned is not None:
                raise FailedPrecondition(f"the model is pinned to v{self.pinned}; ResumeLearning first")
            if not self.leading():
                raise FailedPrecondition(f"only the fleet's leader builds models; ask the leader "
                                         f"({self.leader_name() or 'being elected'})")
            self._rebuild_reason = reason
        version = self._next_step(ask, timeout, "the rebuild")
        if version is None:
            raise FailedPrecondition("a rollback pinned the model before the rebuild ran")
        return version

    def digest(self, timeout: float = 60.0) -> str:
        """`CoVisitModel.digest` of the learner's counts, taken on its thread after a step."""
        return self._next_step(lambda: None, timeout, "the digest", lambda built: self._model.digest())

    def _next_step(self, ask, timeout: float, what: str, then=lambda built: built):
        """Run `ask()` under _lock (it sets what the step is to do), wake the learner and wait
        for that step; returns `then(version the step built, or None)`, run on its thread."""
        waiter: Future = Future()
        with self._lock:
            ask()
            self._rebuild_done.append((waiter, then))
            self._wake.notify_all()
        try:
            return waiter.result(timeout)
        except FutureTimeout:
            raise FailedPrecondition(f"{what} did not finish within {timeout:.0f}s") from None

    def follow_line(self, line: int, timeout: float = 300.0) -> int | None:
        """Serve a full prune of this learner's counts as part of another replica's `line`
        (the counts are equal); the version built, None if a pin came first."""
        def ask() -> None:
            self._follow = line
        return self._next_step(ask, timeout, f"following line v{line}")

    def ensure_checkpoint(self, version: int) -> None:
        """Save a kept version as a (snapshot-only) checkpoint unless it is one already."""
        with self._lock:
            if self.checkpoints is not None and not self.checkpoints.has(version):
                snap = self._find(version)
                self._save(snap, None, log_offset(snap), AVAILABLE)

    def propose(self, snap: Snapshot) -> int:
        """Gate a snapshot made elsewhere (e.g. an offline build with other settings) as a
        candidate under a new version number; it serves only if the gate passes it."""
        with self._lock:
            if self.serving is None:
                raise FailedPrecondition("nothing serves yet to compare a candidate with")
            version = self._new_version()
            candidate = dataclasses.replace(snap, version=version, parent=self.serving.version,
                                            created_at=self.clock(),
                                            meta={**snap.meta, "line": version, "reason": "proposed"})
            if self.checkpoints is not None:
                self._save(candidate, None, log_offset(candidate), CANDIDATE, "proposed")
            if self._candidate is not None:
                self._retire_candidate("replaced by a newer candidate")
            self._lines[version] = candidate
            self._candidate = (candidate, GateRun(candidate, self.serving, events=self.learning.gate_events,
                                                  k=self.learning.gate_k))
        return version

    def request_rebuild(self, reason: str) -> None:
        """A full build soon, without waiting for it (e.g. the CTR floor)."""
        with self._lock:
            if self.pinned is None and self._rebuild_reason is None and self.leading():
                self._rebuild_reason = reason
                self._wake.notify_all()

    def promote(self, version: int) -> tuple[int, int]:
        """Serve a kept version to everyone now, bypassing the gate. A version this process
        built heads a new line that keeps learning; one loaded from disk serves pinned."""
        with self._lock:
            snap = self._find(version)
            old = self.serving.version if self.serving is not None else 0
            if self._candidate is not None and self._candidate[0].version == version:
                self._candidate = None
            if self._model.can_rebase(snap) and self.pinned is None:
                self._lines[snap.version] = snap
                self._start_line(snap)
                self._set_state(version, SERVING, "promoted")
                return version, old
        return self.rollback(version, reason="promoted (built by an earlier process, so pinned)")

    # ---- state file --------------------------------------------------------------------------
    def _read_state(self) -> dict:
        if self.directory is None:
            return {}
        try:
            return json.loads((self.directory / "learner.json").read_text())
        except FileNotFoundError:
            return {}

    def _write_state(self) -> None:
        if self.directory is None:
            return
        with self._state_lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"reserved_versions": self._reserved, "pinned": self.pinned}).encode()
            write_durably(self.directory / "learner.json", lambda f: f.write(text))

