"""The learning model: exact co-visitation counts that grow event by event, and the serving
snapshots made from them.

Counts are kept exact (float64, unpruned); pruning and normalisation happen only when a
snapshot is produced. Per sequence (session, or user split at inactivity gaps) the model keeps
just its last `window` items, so a later batch links to them exactly as one batch build would.
"""

from __future__ import annotations

import logging
import contextlib
import hashlib
import math
import time
import weakref
from collections.abc import Sequence

import numba
import numpy as np

from covisit.core import kernels_build as kb
from covisit.core.config import DISTANCE_MODES, SIMILARITIES, ModelConfig
from covisit.core.events import Event, check_events
from covisit.core.interning import IdMap
from covisit.core.snapshot import Snapshot

log = logging.getLogger(__name__)
# Decay weights stay below 2**64 times a count: float32 snapshots hold up to 2**128.
REBASE_HALF_LIVES = 64
# Room in a snapshot pool for the rows of later incremental snapshots, as a share of its links:
# a new pool (a copy of every row) is made each time changed rows have filled it.
HEADROOM, MIN_HEADROOM = 0.5, 1024


class CoVisitModel:
    def __init__(self, config: ModelConfig | None = None, threads: int | None = None):
        self.config = config or ModelConfig()
        # Build threads (event chunks and row ranges): all cores for a batch build, 1 when serving
        # shares the machine.
        self.threads = threads or numba.config.NUMBA_NUM_THREADS
        self.items = IdMap()
        self.sequences = IdMap()
        self.n_events = 0
        self.anchor: float | None = None  # time origin of decay weights (decay on only)
        self.indptr = np.zeros(1, dtype=np.int64)
        self.indices = np.empty(0, dtype=np.int32)
        self.data = np.empty(0, dtype=np.float64)
        self.popularity = np.empty(0, dtype=np.float64)
        # Which rows changed since a snapshot: `_row_stamp[r]` is the update (counted in
        # `_updates`) that last changed row r's counts or popularity, and `_stamps` holds the
        # value of `_updates` when each live snapshot was made. An incremental snapshot on top
        # of base b re-prunes rows stamped after b; any snapshot of this model can be a base.
        self._updates = 0
        self._row_stamp = np.empty(0, dtype=np.int64)
        self._touched = np.empty(0, dtype=np.bool_)  # scratch: rows one update changes
        self._stamps: weakref.WeakKeyDictionary[Snapshot, int] = weakref.WeakKeyDictionary()
        self._last_snapshot: Snapshot | None = None
        # The pool incremental snapshots append their rows to (indices, scores), and its first
        # position no snapshot uses.
        self._pool: tuple[np.ndarray, np.ndarray] | None = None
        self._pool_fill = 0
        w = self.config.window
        self._hist_items = np.empty((0, w), dtype=np.int32)
        self._hist_w = np.empty((0, w), dtype=np.float64)
        self._hist_n = np.empty(0, dtype=np.int64)
        self._last_time = np.empty(0, dtype=np.float64)
        self._uses_gap = np.empty(0, dtype=np.bool_)
        self._n_sequences = 0  # sequences in use (the arrays above have spare capacity)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_links(self) -> int:
        return int(self.indptr[-1])

    def update(self, events: Sequence[Event]) -> int:
        """Validate, intern and count a batch of events (log order). Returns the pairs added."""
        check_events(events, self.config.event_weights)
        if len(self.sequences) < self._n_sequences:
            raise ValueError("this model counted unnamed sequence ids (update_encoded); named "
                             "events would share their state")
        n = len(events)
        seqs = np.empty(n, dtype=np.int32)
        items = np.empty(n, dtype=np.int32)
        weights = np.empty(n, dtype=np.float64)
        times = np.empty(n, dtype=np.float64)
        event_weights = self.config.event_weights
        first_new = len(self.sequences)
        for i, ev in enumerate(events):
            seqs[i] = self.sequences.intern(ev.sequence_key())
            items[i] = self.items.intern(ev.item_id)
            weights[i] = event_weights[ev.event_type]
            times[i] = ev.timestamp
        self._grow_sequences(len(self.sequences))
        for s in range(first_new, len(self.sequences)):  # users split at gaps, sessions don't
            self._uses_gap[s] = self.sequences.name(s).startswith("u:")
        self._n_sequences = len(self.sequences)
        return self.update_encoded(seqs, items, weights, times)

    def update_encoded(self, seqs: np.ndarray, items: np.ndarray, weights: np.ndarray,
                       times: np.ndarray, uses_gap: bool = False) -> int:
        """Count events given as dense ids (the fast path for bulk builds and benchmarks).

        Item ids must already be interned in `self.items`. Sequence ids beyond those seen so far
        are new sequences, split at inactivity gaps if `uses_gap`.
        """
        n = len(items)
        if n == 0:
            return 0
        seqs = np.ascontiguousarray(seqs, dtype=np.int32)
        items = np.ascontiguousarray(items, dtype=np.int32)
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        times = np.ascontiguousarray(times, dtype=np.float64)
        if not (len(seqs) == len(weights) == len(times) == n):
            raise ValueError("seqs, items, weights and times must have the same length")
        n_items = self.n_items
        if seqs.min() < 0 or items.min() < 0 or items.max() >= n_items:
            raise ValueError(f"sequence ids must be >= 0 and item ids in 0..{n_items - 1}")
        n_seq = int(seqs.max()) + 1
        if n_seq > self._n_sequences:
            self._grow_sequences(n_seq)
            self._uses_gap[self._n_sequences:n_seq] = uses_gap
            self._n_sequences = n_seq
        if len(self.popularity) < n_items:
            self.popularity = np.concatenate(
                [self.popularity, np.zeros(n_items - len(self.popularity))])
        self._grow_touched(n_items)
        self._touched[:] = False
        self._touched[items] = True  # their popularity changes; add_events marks rows with pairs

        cfg = self.config
        half_life = float(cfg.half_life)
        if half_life > 0:
            self._rebase_decay(float(times.min()), float(times.max()))
        k = self._n_sequences
        with self._numba_threads():
            self.indptr, self.indices, self.data, n_pairs = kb.add_events(
                self.indptr, self.indices, self.data, n_items, seqs, items, weights, times,
                self._hist_items[:k], self._hist_w[:k], self._hist_n[:k], self._last_time[:k],
                self._uses_gap[:k], float(cfg.backward), DISTANCE_MODES[cfg.distance],
                float(cfg.session_gap), half_life, float(self.anchor or 0.0), self.popularity,
                self._touched, self.threads)
        self._updates += 1
        self._row_stamp[:n_items][self._touched[:n_items]] = self._updates
        self.n_events += n
        return int(n_pairs)

    def _rebase_decay(self, t_min: float, t_max: float) -> None:
        """Keep decay factors 2**((t - anchor) / half_life) far from overflow.

        Weights grow with time instead of old ones shrinking, so an update touches only new
        cells. When the newest time is more than REBASE_HALF_LIVES past the anchor, the anchor
        moves forward by whole half-lives and every stored weight is multiplied by the same
        power of two, which is exact. (Across a rebase, incremental and batch builds then agree
        to rounding rather than bit for bit.)"""
        h = self.config.half_life
        if self.anchor is None:
            self.anchor = math.floor(t_min / h) * h
        k = math.floor((t_max - self.anchor) / h)
        if k > REBASE_HALF_LIVES:
            scale = 2.0 ** -k
            self.data *= scale
            self.popularity *= scale
            self.anchor += k * h
            self._stamps.clear()  # every row changed: no snapshot can be a base any more
            self._last_snapshot = None

    def _grow_touched(self, n: int) -> None:
        if len(self._touched) < n:
            cap = max(n, 2 * len(self._touched))
            self._touched = np.zeros(cap, dtype=np.bool_)
            self._row_stamp = np.concatenate([self._row_stamp,
                                              np.zeros(cap - len(self._row_stamp), dtype=np.int64)])

    def digest(self) -> str:
        """sha256 of the exact counts with their item names: equal for two models exactly when
        they counted the same events the same way (incremental updates equal a batch build)."""
        h = hashlib.sha256()
        h.update(np.int64(self.n_events).tobytes())
        for name in self.items.names():
            h.update(name.encode("utf-8") + b"\0")
        for array in (self.indptr, self.indices, self.data, self.popularity[:self.n_items]):
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()

    @contextlib.contextmanager
    def _numba_threads(self):
        """Run parallel kernels on `self.threads` threads (this calling thread only): more would
        also leave idle workers spinning on the cores requests need."""
        previous = numba.get_num_threads()
        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            numba.set_num_threads(previous)

    def adopt(self, snap: Snapshot) -> None:
        """Declare `snap` a snapshot of the counts as they are now (a checkpoint's snapshot and
        model, loaded together), so incremental snapshots can build on it."""
        self._stamps[snap] = self._updates

    def can_rebase(self, snap: Snapshot) -> bool:
        """Whether `snap` can be the base of an incremental snapshot of this model."""
        return snap in self._stamps

    def _grow_sequences(self, n: int) -> None:
        have = len(self._hist_n)
        if n <= have:
            return
        cap = max(n, 2 * have, 1024)
        w = self.config.window

        def grow(a: np.ndarray, shape: tuple, fill) -> np.ndarray:
            out = np.full(shape, fill, dtype=a.dtype)
            out[:have] = a[:have]
            return out

        self._hist_items = grow(self._hist_items, (cap, w), -1)
        self._hist_w = grow(self._hist_w, (cap, w), 0.0)
        self._hist_n = grow(self._hist_n, (cap,), 0)
        self._last_time = grow(self._last_time, (cap,), 0.0)
        self._uses_gap = grow(self._uses_gap, (cap,), False)

    def snapshot(self, version: int = 1, parent: int | None = None,
                 incremental: bool = False, base: Snapshot | None = None) -> Snapshot:
        """Prune and normalise the exact counts into an immutable serving snapshot.

        `base` (any snapshot this model made, see `can_rebase`; `incremental=True` means the
        last one): re-prune only the rows of items touched since `base` (counts or popularity
        changed, or new since), and copy every other row from it; a full prune without a
        base, or after a decay rebase. With a similarity
        that normalises by the row alone (conditional, the default, or raw) a re-pruned row
        equals its full prune, and a copied row does too but for ties (equal scores go to the
        better-ranked item, by popularity as of the row's last prune). With a column-dependent
        one (cosine, jaccard, lift, llr) copied rows keep the column totals of their last prune
        until the next full snapshot. Popularity, fill_order and rank are always exact.
        """
        started = time.perf_counter()
        cfg = self.config
        n = self.n_items
        self._grow_touched(n)
        popularity = np.zeros(n, dtype=np.float64)
        popularity[: len(self.popularity)] = self.popularity
        fill_order = np.empty(n, dtype=np.int32)
        rank = np.empty(n, dtype=np.int32)
        if base is None and incremental:
            base = self._last_snapshot
        if base is not None and base not in self._stamps:
            base = None  # made before a decay rebase (or by another model): start afresh
        if base is None:
            rows = np.arange(n, dtype=np.int64)
            fill_order[:] = np.argsort(-popularity, kind="stable")
            rank[fill_order] = np.arange(n, dtype=np.int32)
        else:  # items new since base count as touched
            moved = self._row_stamp[:n] > self._stamps[base]
            moved[base.n_items:] = True
            rows = np.flatnonzero(moved)
            # Merging the touched items into base's order is exact and, at 1M items, about
            # 10x cheaper than the argsort.
            changed = rows[np.argsort(-popularity[rows], kind="stable")]
            kb.merge_fill_order(base.fill_order, moved, changed, popularity, fill_order, rank)
        indptr = self.indptr
        if len(indptr) - 1 < n:  # items interned but not yet counted have empty rows
            indptr = np.concatenate([indptr, np.full(n + 1 - len(indptr), indptr[-1])])
        method = SIMILARITIES[cfg.similarity]
        if method in (kb.SIM_RAW, kb.SIM_CONDITIONAL):  # row totals are summed row by row
            col_sum, total = np.empty(0, dtype=np.float64), 0.0
        else:
            _, col_sum, total = kb.row_col_sums(indptr, self.indices, self.data, n)
        with self._numba_threads():
            csr = kb.prune_rows(indptr, self.indices, self.data, rows, col_sum, total, rank, method,
                                cfg.top_n)
        if base is None:
            bounds = {"starts": csr[0][:-1], "ends": csr[0][1:], "n_links": int(csr[0][-1]),
                      "max_row_length": int(np.diff(csr[0]).max(initial=0))}
            indices, scores = csr[1], csr[2]
        else:
            bounds, indices, scores = self._splice(base, n, rows, *csr)
        seconds = time.perf_counter() - started
        kind = "full" if base is None else "incremental"
        log.debug("%s snapshot v%d: %d items, %d rows pruned, %d links in %.3fs", kind, version, n,
                  len(rows), bounds["n_links"], seconds)
        snap = Snapshot(version=version, parent=parent, config=cfg, items=self.items.view(),
                        indices=indices, scores=scores, **bounds,
                        popularity=popularity.astype(np.float32), fill_order=fill_order, rank=rank,
                        watermark=self.n_events,
                        meta={"kind": kind, "rows_repruned": len(rows), "build_seconds": seconds})
        self._stamps[snap] = self._updates
        self._last_snapshot = snap
        return snap


    def _splice(self, base: Snapshot, n_items: int, rows: np.ndarray, indptr: np.ndarray,
                indices: np.ndarray, scores: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
        """Row bounds and pool of `base` grown to `n_items` rows, with `rows` (ascending,
        including every row past base's) replaced by the CSR of just those rows.

        The new rows are appended to the pool base lives in, while it has room: no live
        snapshot reads past `_pool_fill`, and the other rows stay where they are, so a publish
        writes only what changed. Else the rows are packed into a new pool with HEADROOM."""
        old = rows[rows < base.n_items]
        n_links = base.n_links - int((base.ends[old] - base.starts[old]).sum()) + len(indices)
        longest = max(base.max_row_length, int(np.diff(indptr).max(initial=0)))
        pool = self._pool
        if pool is not None and base.indices is pool[0] and self._pool_fill + len(indices) <= len(pool[0]):
            starts, ends = np.empty(n_items, dtype=np.int64), np.empty(n_items, dtype=np.int64)
            kb.append_rows(base.starts, base.ends, rows, indptr, indices, scores, *pool,
                           self._pool_fill, starts, ends)
            self._pool_fill += len(indices)
        else:
            capacity = n_links + max(int(n_links * HEADROOM), MIN_HEADROOM)
            pool = (np.empty(capacity, dtype=np.int32), np.empty(capacity, dtype=np.float32))
            packed = np.empty(n_items + 1, dtype=np.int64)
            kb.splice_rows(base.starts, base.ends, base.indices, base.scores, rows, indptr, indices,
                           scores, packed, *pool)
            starts, ends = packed[:-1], packed[1:]
            self._pool, self._pool_fill = pool, n_links
        bounds = {"starts": starts, "ends": ends, "n_links": n_links, "max_row_length": longest}
        return bounds, *pool
