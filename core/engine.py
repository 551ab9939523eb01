"""The request engine between the gRPC servicers and the model: one snapshot per request, a
response cache, users' recent history, business rules, fallbacks, exploration, feedback counts.

Requests never lock around scoring: they read the published snapshot reference once and use
only it. Writers (events, rollback, rebuild) serialise on one lock and publish a new snapshot
with a single assignment.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from covisit.core import kernels_topk as kt
from covisit.core.catalog import Catalog, CatalogItem, popularity_view
from covisit.core.config import ModelConfig
from covisit.core.errors import InvalidArgument, NotFound, Unavailable
from covisit.core.eventlog import EventLog, EventLogError, MemoryEventLog
from covisit.core.events import Event, InvalidEvent, check_events, check_id
from covisit.core.experiments import Experiments
from covisit.core.feedback_stats import VersionFeedback, auto_rollback_reason
from covisit.core.learner import Learner, VersionInfo, line_of
from covisit.core.monitor import Monitor
from covisit.core.scoring import Scored, recommend, similar_items
from covisit.core.snapshot import Snapshot

log = logging.getLogger(__name__)
HISTORY_REPLAY_EVENTS = 200_000  # newest logged events read at start to rebuild user histories


@dataclass(frozen=True)
class Recommendation:
    items: list[Scored]
    model_version: int
    request_id: str
    from_cache: bool


class LruMap:
    """A bounded map that forgets the least recently used key; thread-safe."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            value = self._data.get(key, default)
            if key in self._data:
                self._data.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class Engine:
    """`limits`, `cache`, `history`, `exploration` and `learning` are the server's config
    sections (any objects with the same attributes). `data_dir` (None: nothing persists) holds
    checkpoints; `log` is the durable event log (default: in memory); `monitor` watches
    responses, feedback and events (default: one without a prediction log)."""

    def __init__(self, model_config: ModelConfig, *, limits, cache, history, exploration, learning,
                 catalog: Catalog | None = None, log: EventLog | None = None,
                 data_dir: str | os.PathLike | None = None, clock=time.time, monitor: Monitor | None = None):
        self.model_config = model_config
        self.limits, self.cache_config, self.exploration = limits, cache, exploration
        self.learning = learning
        self._newest_logged = 0.0  # timestamp of the newest event logged
        self.catalog = catalog or Catalog()
        self.event_log = log if log is not None else MemoryEventLog()
        self.clock = clock
        self.started = clock()
        self.learner = Learner(model_config, self.learning, self.event_log, data_dir, clock)
        self.feedback = VersionFeedback(window=self.learning.feedback_window)
        self.experiments = Experiments(self.learner, clock)
        self.monitor = monitor or Monitor(clock=clock)
        self.alerts: dict[str, tuple[str, float]] = {}  # kind -> (reason, raised_at)
        self._ctr_floor_line: int | None = None  # the line a CTR-floor rebuild was asked for
        self._history = LruMap(history.max_users)
        self._max_user_items = history.max_items_per_user
        self._cache = LruMap(cache.max_entries)
        self._shown = LruMap(100_000)  # request id -> (the line that answered it, its arm)
        self._random = random.Random(exploration.seed)
        self._random_lock = threading.Lock()
        self.counters = {"recommend_requests": 0, "cache_hits": 0, "events_accepted": 0,
                         "events_rejected": 0, "impressions": 0, "clicks": 0, "auto_rollbacks": 0}
        self.rejected_by_field: dict[str, int] = {}  # events rejected, by the field at fault
        self._counters_lock = threading.Lock()
        self._rollback_lock = threading.Lock()
        self.fleet = None  # a core.fleet.Fleet when replicas share the event log

    def _count(self, name: str, n: int = 1) -> None:
        with self._counters_lock:
            self.counters[name] += n

    def _count_rejected(self, field: str, n: int) -> None:
        with self._counters_lock:
            self.counters["events_rejected"] += n
            self.rejected_by_field[field] = self.rejected_by_field.get(field, 0) + n

    # ---- the model ---------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        snap = self.learner.serving
        if snap is None:
            raise Unavailable("no model loaded yet")
        return snap

    @property
    def ready(self) -> bool:
        return self.learner.serving is not None

    def start(self, on_serving=lambda: None) -> None:
        """Remember the users of the log's newest events, then start learning: the newest
        checkpoint serves at once, the log after it is replayed in the background."""
        self.learner.on_serving = on_serving
        durable = self.event_log.durable_offset
        first = max(self.event_log.start_offset, durable - HISTORY_REPLAY_EVENTS)
        for _, ev in self.event_log.read(first):
            self._remember(ev)
            self._newest_logged = max(self._newest_logged, ev.timestamp)
        self.learner.start()

    def close(self) -> None:
        self.learner.stop()
        self.experiments.close()
        self.monitor.close()

    def load(self, events: Sequence[Event], timeout: float = 60.0) -> None:
        """Check and log `events`, start learning if not started, and wait until they serve."""
        if events:
            check_events(events, self.model_config.event_weights)  # the log holds checked ones
            self.event_log.append(list(events))
            for ev in events:
                self._remember(ev)
            self._newest_logged = max(self._newest_logged, max(e.timestamp for e in events))
        if not self.learner.started:
            self.start()
        self.flush(timeout)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the serving model reflects every event logged so far (False on timeout
        or when pinned)."""
        return self.learner.wait_learned(timeout=timeout)

    def record_events(self, events: Sequence[Event]) -> int:
        """Validate the whole batch, make it durable, and hand it to the learner."""
        self._check_batch(events)
        if not self.learner.started:  # the log is still being seeded
            raise Unavailable("the server is starting; retry shortly")
        self.event_log.append(events)  # durable (per the log's policy) before we acknowledge
        for ev in events:
            self._remember(ev)
        self._newest_logged = max(self._newest_logged, max(e.timestamp for e in events))
        self.learner.notify()
        self._count("events_accepted", len(events))
        self.monitor.events(events)
        return len(events)

    def _check_batch(self, events: Sequence[Event]) -> None:
        limits = self.limits
        if not events:
            raise InvalidArgument("events", "must not be empty")
        if len(events) > limits.max_events_per_call:
            raise InvalidArgument("events", f"at most {limits.max_events_per_call} per call, got {len(events)}")
        try:
            check_events(events, self.model_config.event_weights)
            latest = self.clock() + limits.max_future_seconds
            for i, ev in enumerate(events):
                if not limits.min_timestamp <= ev.timestamp <= latest:
                    raise InvalidEvent("timestamp", f"must be between {limits.min_timestamp:.0f} and now + "
                                       f"{limits.max_future_seconds:.0f}s, got {ev.timestamp!r}", i)
        except InvalidArgument as exc:
            self._count_rejected(exc.field, len(events))
            raise

    def _remember(self, ev: Event) -> None:
        recent = self._history.get(ev.user_id) or ()
        if not recent or recent[-1] != ev.item_id:
            self._history.put(ev.user_id, (*recent, ev.item_id)[-self._max_user_items:])

    def rebuild(self) -> VersionInfo:
        """A full build from the exact counts; CANDIDATE until the gate scores it."""
        return self.version(self.learner.rebuild())

    def rollback(self, version: int, reason: str = "rollback", share: bool = True) -> tuple[int, int]:
        """Serve a kept version again, pinned until resume_learning. Returns (new, old).
        `share`: in a fleet, every replica does the same (False: applying the fleet's state)."""
        fleet = self.fleet if share else None
        if fleet is not None:
            fleet.fetch(version)  # another replica's version
        self.experiments.forget(version)
        result = self.learner.rollback(version, reason)
        if fleet is not None:
            fleet.share(pinned=version, reason=reason)
        return result

    def resume_learning(self, share: bool = True) -> tuple[int, int]:
        """(serving version, events learned that waited during the pin)."""
        resumed = self.learner.resume()
        self.alerts.pop("auto_rollback", None)  # the operator has acted on it
        if share and self.fleet is not None:
            self.fleet.share(pinned=None, reason="")
        return resumed

    def promote(self, version: int) -> tuple[int, int]:
        """Serve a kept version to everyone (see Learner.promote). In a fleet, a replica that
        does not lead names it as the fleet's line, which the leader then promotes."""
        if self.fleet is not None:
            self.fleet.fetch(version)
            if not self.learner.leading():
                old = self.snapshot.version
                self.fleet.share(line=version)
                return version, old
        self.experiments.forget(version)
        result = self.learner.promote(version)
        if self.fleet is not None:  # a new line the others follow, or a pin (see Learner.promote)
            pinned = self.learner.pinned
            self.fleet.share(**({"pinned": pinned, "reason": "promoted"} if pinned is not None else {"line": version}))
        return result

    def start_experiment(self, kind: str, version: int, fraction: float, share: bool = True) -> None:
        """Start the A/B test ("ab": `fraction` of users) or shadow run ("shadow": of requests)."""
        fleet = self.fleet if share else None
        if fleet is not None:
            fleet.fetch(version)
        start = self.experiments.start_ab if kind == "ab" else self.experiments.start_shadow
        start(version, fraction)
        if fleet is not None:
            fleet.share(**{kind: (version, fraction)})

    def stop_experiment(self, kind: str, share: bool = True) -> None:
        (self.experiments.stop_ab if kind == "ab" else self.experiments.stop_shadow)()
        if share and self.fleet is not None:
            self.fleet.share(**{kind: None})

    def versions(self) -> list[VersionInfo]:
        return self.learner.versions(self.experiments.running())

    def version(self, version: int) -> VersionInfo:
        for info in self.versions():
            if info.version == version:
                return info
        raise NotFound(f"model version {version} is not kept")

    # ---- requests ----------------------------------------------------------------------
    def recommend(self, *, user_id: str = "", context_items: Sequence[str] = (), k: int = 10,
                  exclude_items: Sequence[str] = (), exclude_seen: bool = False,
                  allowed_items: Sequence[str] | None = None, categories: Sequence[str] = ()) -> Recommendation:
        self._check_request(user_id, context_items, k, exclude_items, allowed_items, categories)
        serving = self.snapshot  # read once: this request uses only this model ...
        snap = self.experiments.arm(user_id) or serving  # ... or the A/B arm's
        self._count("recommend_requests", 1)
        seen = self._history.get(user_id, ()) if user_id else ()
        context = list(context_items) if context_items else list(seen)
        key = (snap.version, self.catalog.version, tuple(context), k, tuple(exclude_items),
               tuple(seen) if exclude_seen else (), None if allowed_items is None else tuple(allowed_items),
               tuple(categories))
        cached = self._cache.get(key) if self.cache_config.enabled else None
        if cached is not None and self.clock() - cached[0] <= self.cache_config.ttl_seconds:
            items, from_cache = cached[1], True
            self._count("cache_hits", 1)
        else:
            items = self._score(snap, context, k, exclude_items, seen if exclude_seen else (),
                                allowed_items, categories)
            from_cache = False
            if self.cache_config.enabled:
                self._cache.put(key, (self.clock(), items))
        items = self._explore(snap, items, context, exclude_items, allowed_items, categories)
        arm = "serving" if snap is serving else "ab"
        line = line_of(snap)
        request_id = f"{uuid.uuid4().hex}-{line}-{arm}"  # any replica of a fleet can read it
        self._shown.put(request_id, (line, arm))
        self.monitor.responded(request_id, user_id, context, items, snap.version, arm)
        if snap is serving and self.experiments.shadowing:
            self.experiments.maybe_shadow(
                [i.item_id for i in items],
                lambda shadow: [i.item_id for i in self._score(shadow, context, k, exclude_items,
                                                               seen if exclude_seen else (), allowed_items,
                                                               categories)])
        return Recommendation(items, snap.version, request_id, from_cache)

    def _check_request(self, user_id, context_items, k, exclude_items, allowed_items, categories) -> None:
        limits = self.limits
        if not 1 <= k <= limits.max_k:
            raise InvalidArgument("k", f"must be in 1..{limits.max_k}, got {k}")
        if len(context_items) > limits.max_context_items:
            raise InvalidArgument("context_items", f"at most {limits.max_context_items}, got {len(context_items)}")
        if user_id:
            check_id("user_id", user_id)
        elif not context_items:
            raise InvalidArgument("user_id", "give a user_id or context_items")
        for name, ids in (("context_items", context_items), ("exclude_items", exclude_items),
                          ("allowed_items", allowed_items or ()), ("categories", categories)):
            for i, value in enumerate(ids):
                check_id(f"{name}[{i}]", value)

    def _score(self, snap, context, k, exclude_items, seen, allowed_items, categories) -> list[Scored]:
        exclude = [*exclude_items, *seen]
        hidden = self.catalog.hidden_dense(snap.items)  # content neighbours skip hidden items too
        allowed = None if allowed_items is None or not allowed_items else set(allowed_items)
        if categories:
            in_categories = self.catalog.items_in_categories(categories)
            allowed = in_categories if allowed is None else allowed & in_categories
        try:
            items = recommend(snap, context, k, exclude=exclude, allowed=allowed, exclude_ids=hidden)
        except Exception:  # never fail a request for a scoring bug: popular items instead
            log.exception("scoring failed; answering from popularity")
            items = recommend(snap, [], k, exclude=exclude, allowed=allowed, exclude_ids=hidden)
        return self._content_fill(snap, items, context, k, exclude, allowed)

    def _content_fill(self, snap, items, context, k, exclude, allowed) -> list[Scored]:
        """Replace popularity fill with catalog neighbours of context items the model
        cannot link (unknown to it, or without co-visitation)."""
        cold = [c for c in context if (i := snap.items.get(c)) < 0 or snap.starts[i] == snap.ends[i]]
        if not cold or all(s.source != kt.SOURCE_POPULARITY for s in items):
            return items
        kept = [s for s in items if s.source != kt.SOURCE_POPULARITY]
        taken = {s.item_id for s in kept} | set(exclude) | set(context)
        popularity = popularity_view(snap)
        content = []
        for item in reversed(cold):  # newest first
            for item_id, score in self.catalog.content_neighbours(item, popularity, k, taken):
                if allowed is None or item_id in allowed:
                    content.append(Scored(item_id, score, kt.SOURCE_CONTENT))
                    taken.add(item_id)
        fill = [s for s in items if s.source == kt.SOURCE_POPULARITY and s.item_id not in taken]
        return (kept + content + fill)[:k]

    def _explore(self, snap, items, context, exclude_items, allowed_items, categories) -> list[Scored]:
        """With probability `rate`, the last slot shows an item from the exploration pool
        (never the only slot: a k=1 caller wants the best item)."""
        cfg = self.exploration
        if len(items) < 2 or cfg.rate <= 0 or allowed_items or categories:
            return items
        with self._random_lock:
            if self._random.random() >= cfg.rate:
                return items
            n = snap.n_items
            start = 0 if cfg.pool == "all" else int(math.floor(n * (1 - cfg.long_tail_fraction)))
            picks = [int(snap.fill_order[self._random.randrange(start, n)]) for _ in range(8)] if start < n else []
        taken = {s.item_id for s in items} | set(exclude_items) | set(context)
        for pick in picks:
            item_id = snap.items.name(pick)
            if item_id not in taken and not self.catalog.is_hidden(item_id):
                return [*items[:-1], Scored(item_id, 0.0, kt.SOURCE_EXPLORATION)]
        return items

    def similar(self, item_id: str, k: int) -> tuple[list[Scored], int]:
        check_id("item_id", item_id)
        if not 1 <= k <= self.limits.max_k:
            raise InvalidArgument("k", f"must be in 1..{self.limits.max_k}, got {k}")
        snap = self.snapshot
        return similar_items(snap, item_id, k, exclude_ids=self.catalog.hidden_dense(snap.items)), snap.version

    # ---- feedback ----------------------------------------------------------------------
    def record_impressions(self, request_id: str, user_id: str, item_ids: Sequence[str]) -> int:
        line, arm = self._shown_line(request_id)
        if user_id:
            check_id("user_id", user_id)
        for i, item_id in enumerate(item_ids):
            check_id(f"item_ids[{i}]", item_id)
        self._feedback(request_id, line, impressions=len(item_ids))
        self.monitor.shown(request_id, line, arm, item_ids)
        self._count("impressions", len(item_ids))
        return len(item_ids)

    def record_click(self, request_id: str, user_id: str, item_id: str) -> None:
        line, arm = self._shown_line(request_id)
        if user_id:
            check_id("user_id", user_id)
        check_id("item_id", item_id)
        self._feedback(request_id, line, clicks=1)
        self.monitor.clicked(request_id, line, arm, item_id)
        self._count("clicks", 1)

    def _feedback(self, request_id: str, line: int, impressions: int = 0, clicks: int = 0) -> None:
        """Count feedback per line; a fleet's replicas publish it instead, and every replica
        counts what the stream brings back (so the leader judges the whole fleet's CTR)."""
        if self.fleet is not None:
            self.fleet.publish_feedback(request_id, line, impressions, clicks)
        else:
            self.count_feedback(request_id, line, impressions, clicks)
            self.watch_ctr()

    def count_feedback(self, request_id: str, line: int, impressions: int, clicks: int) -> None:
        if impressions:
            self.feedback.impression(request_id, line, impressions)
        for _ in range(clicks):
            self.feedback.click(request_id, line)

    def _shown_line(self, request_id: str) -> tuple[int, str]:
        """(line, arm) of the response `request_id` names."""
        check_id("request_id", request_id)
        shown = self._shown.get(request_id)
        if shown is None and self.fleet is not None:  # answered by another replica
            shown = _line_and_arm(request_id)
        if shown is None:
            raise NotFound(f"request_id {request_id!r} is unknown (or too old)")
        return shown

    def watch_ctr(self) -> None:
        """Auto-rollback when the serving line's window CTR falls well below the previous
        line's; a full rebuild when it falls below the floor."""
        cfg, learner = self.learning, self.learner
        serving = learner.serving
        if serving is None or learner.pinned is not None or not learner.leading():  # the leader decides
            return
        line, previous = line_of(serving), learner.previous_line
        current = self.feedback.stats(line).window
        if cfg.auto_rollback and previous is not None:
            reason = auto_rollback_reason(current, self.feedback.stats(previous).window,
                                          cfg.feedback_window, cfg.auto_rollback_drop)
            if reason is not None:
                with self._rollback_lock:
                    if learner.pinned is None and line_of(learner.serving) == line:
                        self._auto_rollback(previous, reason)
                return
        if (current.impressions >= cfg.feedback_window and current.ctr < cfg.ctr_floor
                and self._ctr_floor_line != line):
            self._ctr_floor_line = line
            learner.request_rebuild(f"window CTR {current.ctr:.4f} of line {line} is below the "
                                    f"floor {cfg.ctr_floor:g}")

    def _auto_rollback(self, version: int, reason: str) -> None:
        try:
            self.rollback(version, reason=f"auto-rollback: {reason}")
        except EventLogError as exc:  # pinned here; the fleet hears of it at the next pin
            log.error("auto-rollback to v%d: the other replicas could not be told (%s)", version, exc)
        except NotFound:
            log.error("auto-rollback to v%d impossible (no longer kept): %s", version, reason)
            self.alerts["auto_rollback"] = (f"wanted to roll back to v{version}, which is no longer "
                                            f"kept: {reason}", self.clock())
            return
        self.alerts["auto_rollback"] = (f"rolled back to v{version} and pinned it: {reason}", self.clock())
        self._count("auto_rollbacks", 1)
        log.error("auto-rollback to v%d: %s", version, reason)

    # ---- reports -----------------------------------------------------------------------
    def status(self) -> dict:
        snap = self.snapshot
        learner = self.learner
        now = self.clock()
        return {"model_version": snap.version, "items": snap.n_items, "links": snap.n_links,
                "events": snap.watermark, "uptime_seconds": now - self.started,
                "freshness_seconds": max(0.0, now - newest) if (newest := snap.meta.get("newest_event")) else 0.0,
                "users": len(self._history), "catalog_items": len(self.catalog),
                "pinned_version": learner.pinned, "learning": learner.state,
                "events_pending": learner.pending(), "log_events": self.event_log.durable_offset,
                "alerts": self.status_alerts(),
                "ab_test": self.experiments.describe("ab"), "shadow": self.experiments.describe("shadow"),
                "feedback": self.version_feedback(),
                "model_line": line_of(snap),
                "replica": self.fleet.name if self.fleet else "", "leader": self.fleet.leader if self.fleet else ""}

    def status_alerts(self) -> list[tuple[str, str, float]]:
        """(kind, reason, raised at) of each alert raised and not cleared."""
        learner = self.learner
        failed = ([("learner", f"learning stopped: {learner.error}; the last model keeps serving", self.clock())]
                  if learner.state == "failed" else [])
        return [(kind, reason, at) for kind, (reason, at) in list(self.alerts.items())] + failed

    def version_feedback(self) -> list[dict]:
        out = []
        for line in reversed(self.feedback.versions()):
            st = self.feedback.stats(line)
            out.append({"version": line, "impressions": st.impressions, "clicks": st.clicks, "ctr": st.ctr,
                        "window_impressions": st.window.impressions, "window_clicks": st.window.clicks,
                        "window_ctr": st.window.ctr})
        return out

    def metrics(self) -> dict:
        learner = self.learner
        serving = learner.serving
        lag = max(0.0, self._newest_logged - serving.meta.get("newest_event", 0.0)) if serving else 0.0
        monitor = self.monitor
        recent, baseline, recent_n, baseline_n = monitor.ctr_drift.figures()
        predictions = monitor.predictions
        return {"feedback": self.version_feedback(), "publishes": learner.publishes,
                "auto_rollbacks": self.counters["auto_rollbacks"], "shadow": self.experiments.shadow_stats(),
                "freshness_lag_seconds": lag, "waiting_seconds": learner.waited_seconds(),
                "hit_rate": monitor.hits.rate,
                "exposure": monitor.exposure_stats(serving.n_items if serving else 0)._asdict(),
                "arms": [{"version": line, "arm": arm, "impressions": shown, "clicks": clicks,
                          "ctr": clicks / shown if shown else 0.0} for line, arm, shown, clicks in monitor.feedback()],
                "drift": {"ctr_recent": recent, "ctr_baseline": baseline, "recent_impressions": recent_n,
                          "baseline_impressions": baseline_n, "item_divergence": monitor.item_drift.divergence()},
                "events_rejected_by": dict(self.rejected_by_field),
                "predictions_logged": predictions.written if predictions else 0,
                "predictions_dropped": predictions.dropped if predictions else 0}

    def upsert_items(self, items: Sequence[tuple[str, Sequence[str], bool, Sequence[str]]]) -> int:
        """(item_id, categories, available, tags) tuples, all checked before any is written."""
        limit = self.limits.max_events_per_call
        if len(items) > limit:
            raise InvalidArgument("items", f"at most {limit} per call, got {len(items)}")
        checked = []
        for i, (item_id, categories, available, tags) in enumerate(items):
            check_id(f"items[{i}].item_id", item_id)
            for name, names in (("categories", categories), ("tags", tags)):
                for j, value in enumerate(names):
                    check_id(f"items[{i}].{name}[{j}]", value)
            checked.append(CatalogItem(item_id, tuple(categories), available, tuple(tags)))
        return self.catalog.upsert(checked)

    def delete_items(self, item_ids: Iterable[str]) -> int:
        item_ids = list(item_ids)
        for i, item_id in enumerate(item_ids):
            check_id(f"item_ids[{i}]", item_id)
        return self.catalog.delete(item_ids)


def _line_and_arm(request_id: str) -> tuple[int, str] | None:
    """(line, arm) from a request id `recommend` made, else None."""
    token, _, rest = request_id.partition("-")
    line, _, arm = rest.partition("-")
    if len(token) == 32 and line.isdigit() and arm in ("serving", "ab"):
        return int(line), arm
    return None
