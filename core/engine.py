"""The request engine between the gRPC servicers and the model: one snapshot per request, a
response cache, users' recent history, business rules, fallbacks, exploration, feedback counts.

Requests never lock around scoring: they read the published snapshot reference once and use
only it. Writers (events, rollback, rebuild) serialise on one lock and publish a new snapshot
with a single assignment.
"""

from __future__ import annotations

import logging
import math
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
from covisit.core.eventlog import EventLog
from covisit.core.events import Event, InvalidEvent, check_events, check_id
from covisit.core.model import CoVisitModel
from covisit.core.scoring import Scored, recommend, similar_items
from covisit.core.snapshot import Snapshot

log = logging.getLogger(__name__)
KEPT_VERSIONS = 10  # snapshots kept in memory for rollback


@dataclass(frozen=True)
class Recommendation:
    items: list[Scored]
    model_version: int
    request_id: str
    from_cache: bool


@dataclass(frozen=True)
class VersionInfo:
    version: int
    parent: int | None
    state: str  # SERVING or AVAILABLE
    created_at: float
    watermark: int
    items: int
    links: int
    metrics: dict


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
    """`limits`, `cache`, `history` and `exploration` are the server's config sections (any
    objects with the same attributes)."""

    def __init__(self, model_config: ModelConfig, *, limits, cache, history, exploration,
                 catalog: Catalog | None = None, log: EventLog | None = None, clock=time.time):
        self.model_config = model_config
        self.limits, self.cache_config, self.exploration = limits, cache, exploration
        self.catalog = catalog or Catalog()
        self.event_log = log  # recorded events are durable here before they are acknowledged
        self.clock = clock
        self.started = clock()
        self._snapshot: Snapshot | None = None
        self._versions: OrderedDict[int, Snapshot] = OrderedDict()
        self._model = CoVisitModel(model_config, threads=1)  # serving shares the cores
        self._events: list[Event] = []  # the history RebuildModel replays (issue 4: the log)
        self._newest_event = 0.0
        self._write = threading.Lock()
        self._history = LruMap(history.max_users)
        self._max_user_items = history.max_items_per_user
        self._cache = LruMap(cache.max_entries)
        self._shown = LruMap(100_000)  # request id -> (version, items shown), for clicks
        self._random = random.Random(exploration.seed)
        self._random_lock = threading.Lock()
        self.counters = {"recommend_requests": 0, "cache_hits": 0, "events_accepted": 0,
                         "events_rejected": 0, "impressions": 0, "clicks": 0}
        self._counters_lock = threading.Lock()

    def _count(self, name: str, n: int = 1) -> None:
        with self._counters_lock:
            self.counters[name] += n

    # ---- the model ---------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:
            raise Unavailable("no model loaded yet")
        return snap

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    def _publish(self, snap: Snapshot) -> None:
        old = self._snapshot
        self._versions[snap.version] = snap
        while len(self._versions) > KEPT_VERSIONS:
            self._versions.popitem(last=False)
        self._snapshot = snap  # the one assignment requests see
        log.info("serving model v%d (was v%s): %d items, %d links", snap.version,
                 old.version if old else "-", snap.n_items, snap.n_links)

    def serve_saved(self, snapshot: Snapshot) -> None:
        """Answer from a saved snapshot at once, before the event history is replayed."""
        with self._write:
            self._publish(snapshot)

    def load(self, events: Sequence[Event]) -> None:
        """Count an event history into the model that later events update; publish a snapshot
        of it unless one saved from the same events already serves."""
        with self._write:
            self._model = CoVisitModel(self.model_config, threads=1)
            self._model.update(list(events))
            self._events = list(events)
            self._newest_event = max((e.timestamp for e in events), default=0.0)
            for ev in events:
                self._remember(ev)
            if self._snapshot is None or self._snapshot.watermark != len(events):
                self._publish(self._model.snapshot(version=max(self._versions, default=0) + 1))

    def record_events(self, events: Sequence[Event]) -> int:
        """Validate the whole batch, then count it and publish the updated model."""
        self._check_batch(events)
        with self._write:  # one writer at a time, so the model sees events in log order
            if self.event_log is not None:
                self.event_log.append(events)
            parent = self._snapshot.version if self._snapshot else None
            self._model.update(events)
            self._events.extend(events)
            self._newest_event = max(self._newest_event, max(e.timestamp for e in events))
            version = max(self._versions, default=0) + 1
            self._publish(self._model.snapshot(version=version, parent=parent))
        for ev in events:
            self._remember(ev)
        self._count("events_accepted", len(events))
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
        except InvalidArgument:
            self._count("events_rejected", len(events))
            raise

    def _remember(self, ev: Event) -> None:
        recent = self._history.get(ev.user_id) or ()
        if not recent or recent[-1] != ev.item_id:
            self._history.put(ev.user_id, (*recent, ev.item_id)[-self._max_user_items:])

    def rebuild(self) -> Snapshot:
        """A new version from the whole event history, serving at once."""
        with self._write:
            model = CoVisitModel(self.model_config, threads=1)
            if self._events:
                model.update(self._events)
            self._model = model
            parent = self._snapshot.version if self._snapshot else None
            self._publish(model.snapshot(version=max(self._versions, default=0) + 1, parent=parent))
            return self._snapshot

    def rollback(self, version: int) -> tuple[int, int]:
        """Serve a kept version again (until the next model update). Returns (new, old)."""
        with self._write:
            snap = self._versions.get(version)
            if snap is None:
                raise NotFound(f"model version {version} is not kept (kept: {sorted(self._versions)})")
            old = self.snapshot.version
            self._snapshot = snap
            log.warning("rolled back from model v%d to v%d", old, version)
            return version, old

    def versions(self) -> list[VersionInfo]:
        serving = self._snapshot.version if self._snapshot else None
        return [VersionInfo(s.version, s.parent, "SERVING" if s.version == serving else "AVAILABLE",
                            s.created_at, s.watermark, s.n_items, s.n_links, dict(s.meta))
                for s in reversed(self._versions.values())]

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
        snap = self.snapshot  # read once: this request uses only this model
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
        request_id = uuid.uuid4().hex
        self._shown.put(request_id, (snap.version, frozenset(i.item_id for i in items)))
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
        cold = [c for c in context if (i := snap.items.get(c)) < 0 or snap.indptr[i] == snap.indptr[i + 1]]
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
        self._shown_items(request_id)
        if user_id:
            check_id("user_id", user_id)
        for i, item_id in enumerate(item_ids):
            check_id(f"item_ids[{i}]", item_id)
        self._count("impressions", len(item_ids))
        return len(item_ids)

    def record_click(self, request_id: str, user_id: str, item_id: str) -> None:
        self._shown_items(request_id)
        if user_id:
            check_id("user_id", user_id)
        check_id("item_id", item_id)
        self._count("clicks", 1)

    def _shown_items(self, request_id: str) -> frozenset:
        check_id("request_id", request_id)
        shown = self._shown.get(request_id)
        if shown is None:
            raise NotFound(f"request_id {request_id!r} is unknown (or too old)")
        return shown[1]

    # ---- reports -----------------------------------------------------------------------
    def status(self) -> dict:
        snap = self.snapshot
        now = self.clock()
        return {"model_version": snap.version, "items": snap.n_items, "links": snap.n_links,
                "events": snap.watermark, "uptime_seconds": now - self.started,
                "freshness_seconds": max(0.0, now - self._newest_event) if self._newest_event else 0.0,
                "users": len(self._history), "catalog_items": len(self.catalog)}

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

