"""One replica's part in a fleet that shares a JetStream stream (see fleet_store for what is
kept where).

Every replica learns every event of the stream itself, so counts agree without shipping
models around. What the fleet must agree on besides is which version serves, and that lives
in the fleet state every replica watches:
- a rollback, resume, promotion, A/B test or shadow run sent to any replica is applied there,
  then written to the state (with the checkpoint it names put in the object store), and the
  other replicas apply it when they see the change;
- one replica, the leader (by lease), runs the periodic and requested full builds, the quality
  gate and the automatic rollback, and saves checkpoints; when its serving line changes it
  stores the line's checkpoint and names the line in the state. The others then re-prune their
  own counts (equal to the leader's) into a snapshot of that line, so feedback on any replica
  is feedback on the one line;
- a replica starting with an empty data dir first fetches the checkpoints the state names, so
  it starts from the newest line and replays only the stream's tail.

Changes are applied on one thread, in the order the state changed; the lease is renewed on
another, so a long apply (a resume waits for a full build) cannot cost the leadership.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time

from covisit.core.errors import NotFound
from covisit.core.eventlog import EventLogError
from covisit.core.fleet_store import FleetState, FleetStore
from covisit.core.learner import line_of

log = logging.getLogger(__name__)
RETRY_SECONDS = 1.0  # before applying a change again that failed on a NATS outage


class Fleet:
    def __init__(self, store: FleetStore, engine, keep: int = 10):
        self.store, self.engine, self.learner = store, engine, engine.learner
        self.keep = keep  # checkpoints kept in the object store, besides those the state names
        self.leading = False
        self.leader = ""  # the lease holder's name, as of the last renewal
        self.state = FleetState()  # the newest state seen
        self._changes: queue.Queue = queue.Queue()
        self._ctr_queued = threading.Event()  # a CTR check waits in _changes
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        learner = self.learner
        learner.leading = lambda: self.leading
        learner.leader_name = lambda: self.leader
        learner.reserve_versions = store.reserve_versions
        learner.on_line = lambda version: self._changes.put(("line", version))
        learner.on_checkpoint = self._checkpoint_saved
        learner.serve_early = False  # a replica behind the fleet answers NOT_SERVING instead

    # ---- running ---------------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Before the learner loads: fetch the checkpoints the fleet state names (the line's
        holds the model a new replica starts from)."""
        state = self.store.state()
        for version in sorted(state.versions(), reverse=True):
            try:
                self.fetch(version)
            except NotFound as exc:  # pruned meanwhile: the replica starts from what there is
                log.warning("fleet: %s", exc)

    @property
    def name(self) -> str:
        return self.store.name

    def start(self) -> None:
        """Take part: lease, state and feedback (once; a start that failed may be called again)."""
        if self._threads:
            return
        self._take_turn()
        self.store.watch_state(lambda state: self._changes.put(("state", state)))
        self.store.watch_feedback(self._feedback_seen)
        for target, name in ((self._renew, "covisit-fleet-lease"), (self._apply_changes, "covisit-fleet")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        self._changes.put(("stop", None))
        for thread in self._threads:
            thread.join(timeout=10)
        try:
            self.store.resign()  # so another replica leads at once, not after the lease
        except EventLogError as exc:
            log.warning("fleet: could not give up the lease: %s", exc)
        self.store.close()

    def _renew(self) -> None:
        while not self._stop.wait(self.store.lease / 3):
            self._take_turn()

    def _take_turn(self) -> None:
        """Renew or take the lease; learn who leads."""
        try:
            leading = self.store.try_lead()
            self.leader = self.name if leading else self.store.leader()
        except EventLogError as exc:  # out of reach: another replica may lead by now
            log.warning("fleet: cannot renew the lease (%s)", exc)
            leading, self.leader = False, ""
        if leading != self.leading:
            log.warning("fleet: %s %s the leader", self.name, "is now" if leading else "is no longer")
        gained, self.leading = leading and not self.leading, leading
        serving = self.learner.serving
        if gained and serving is not None:  # the old leader may have died before naming its line
            self._changes.put(("line", line_of(serving)))

    def _apply_changes(self) -> None:
        while True:
            kind, arg = self._changes.get()
            if kind == "stop":
                return
            while self.learner.serving is None:  # loading: the change waits for a model to change
                if self._stop.wait(0.1):
                    return
            while not self._stop.is_set():
                try:
                    if kind == "state":
                        self._apply(arg, self.state)
                        self.state = arg
                    elif kind == "line":
                        self._share_line(arg)
                    elif kind == "ctr":
                        self._ctr_queued.clear()
                        self.engine.watch_ctr()  # acts on the leader only
                    elif self.leading:  # other replicas may roll back to any of the leader's
                        self._store_checkpoint(arg)
                        self._prune()
                    break
                except EventLogError as exc:
                    log.warning("fleet: %s %s failed (%s); trying again", kind, arg, exc)
                    self._stop.wait(RETRY_SECONDS)
                except Exception:
                    log.exception("fleet: applying %s %s failed", kind, arg)
                    break

    # ---- feedback ----------------------------------------------------------------------------
    def publish_feedback(self, request_id: str, line: int, impressions: int, clicks: int) -> None:
        self.store.publish_feedback(json.dumps([request_id, line, impressions, clicks]).encode())

    def _feedback_seen(self, data: bytes) -> None:
        """On the store's loop: count a replica's feedback, and have the CTR checked (off the
        loop: an automatic rollback talks to NATS)."""
        request_id, line, impressions, clicks = json.loads(data)
        self.engine.count_feedback(request_id, line, impressions, clicks)
        if self.leading and not self._ctr_queued.is_set():
            self._ctr_queued.set()
            self._changes.put(("ctr", None))

    # ---- applying the fleet's state ----------------------------------------------------------
    def _apply(self, state: FleetState, previous: FleetState) -> None:
        engine, learner = self.engine, self.learner
        if state.pinned is not None:
            if learner.pinned != state.pinned:
                self.fetch(state.pinned)
                engine.rollback(state.pinned, reason=state.reason or f"rolled back by {state.by}", share=False)
        elif learner.pinned is not None:
            engine.resume_learning(share=False)
        elif state.line is not None and line_of(learner.serving) != state.line:
            if not self.leading:
                learner.follow_line(state.line)
            elif state.line != previous.line and state.by != self.name:  # a promotion sent elsewhere
                engine.promote(state.line)
        for kind in ("ab", "shadow"):
            wanted, running = getattr(state, kind), engine.experiments.describe(kind)
            if wanted is None and running is not None:
                engine.stop_experiment(kind, share=False)
            elif wanted is not None and (running is None or running[:2] != wanted):
                self.fetch(wanted[0])
                engine.start_experiment(kind, *wanted, share=False)

    def fetch(self, version: int) -> None:
        """Make a version the object store holds findable here (a no-op when it is already)."""
        checkpoints = self.learner.checkpoints
        if checkpoints is None or checkpoints.has(version):
            return
        try:
            self.learner.find(version)
            return
        except NotFound:
            pass
        data = self.store.get_checkpoint(version)
        if data is None:
            raise NotFound(f"model version {version} is kept by no replica of the fleet")
        checkpoints.import_archive(version, data)
        log.info("fleet: fetched checkpoint v%d (%.1f MB)", version, len(data) / 1e6)

    # ---- sharing this replica's changes ------------------------------------------------------
    def share(self, **change) -> FleetState:
        """Store the versions `change` names (fields of FleetState), then write it to the state."""
        for key in ("line", "pinned", "ab", "shadow"):
            value = change.get(key)
            if value is not None:
                self._store_checkpoint(value if isinstance(value, int) else value[0])
        return self.store.change_state(lambda state: dataclasses.replace(state, **change))

    def _checkpoint_saved(self, version: int) -> None:
        """On the learner's thread: store the leader's checkpoints at once, so a version the
        leader names (e.g. a rebuild's candidate) can be rolled back to or promoted anywhere."""
        if not self.leading:
            return
        try:
            self._store_checkpoint(version)
        except EventLogError as exc:  # learning goes on; the fleet's thread tries again
            log.warning("fleet: storing checkpoint v%d failed (%s); trying again", version, exc)
            self._changes.put(("checkpoint", version))

    def _share_line(self, version: int) -> None:
        """The leader's serving line changed: the fleet follows (unless a pin came meanwhile)."""
        if not self.leading or self.learner.pinned is not None or self.state.line == version:
            return
        self._store_checkpoint(version)
        self.state = self.store.change_state(
            lambda state: state if state.pinned is not None else dataclasses.replace(state, line=version))
        self._prune()

    def _store_checkpoint(self, version: int) -> None:
        checkpoints = self.learner.checkpoints
        if checkpoints is None or self.store.has_checkpoint(version):
            return
        self.learner.ensure_checkpoint(version)
        started = time.perf_counter()
        data = checkpoints.export(version)
        self.store.put_checkpoint(version, data)
        log.info("fleet: stored checkpoint v%d (%.1f MB) in %.2fs", version, len(data) / 1e6,
                 time.perf_counter() - started)

    def _prune(self) -> None:
        """Keep the newest `keep` checkpoints in the object store and those the state names."""
        versions = self.store.checkpoint_versions()
        needed = self.state.versions()
        for version in sorted(versions, reverse=True)[self.keep:]:
            if version not in needed:
                self.store.delete_checkpoint(version)
