"""Request-side glue: turn item ids into a kernel call on one snapshot and back.

Python only validates, interns and hands over preallocated buffers; all per-neighbour work is
in `kernels_topk`. Scratch tables are per thread, so concurrent requests share nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from covisit.core import kernels_topk as kt
from covisit.core.snapshot import Snapshot

SOURCE_NAMES = {
    kt.SOURCE_COOCCURRENCE: "COOCCURRENCE",
    kt.SOURCE_CONTENT: "CONTENT",
    kt.SOURCE_POPULARITY: "POPULARITY",
    kt.SOURCE_EXPLORATION: "EXPLORATION",
}
MAX_K = 1000
_EMPTY = np.empty(0, dtype=np.int32)
_scratch = threading.local()


class Scored(NamedTuple):
    item_id: str
    score: float
    source: int  # kernels_topk.SOURCE_*


def new_scratch(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, vals, slots) for a kernel table of `size` entries."""
    return np.empty(size, np.int32), np.empty(size, np.float32), np.empty(size, np.int32)


def scratch_size(snapshot: Snapshot, n_context: int, n_exclude: int = 0) -> int:
    """A table size that fits any context of `n_context` items of this snapshot and
    `n_exclude` exclusions (at least what kernels_topk.table_size asks for)."""
    return max(16, 1 << (4 * (snapshot.max_row_length * n_context + n_exclude) - 1).bit_length())


def _thread_scratch(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scratch = getattr(_scratch, "arrays", None)
    if scratch is None or len(scratch[0]) < size:
        _scratch.arrays = scratch = new_scratch(size)
    return scratch


def _known(snapshot: Snapshot, ids: Iterable[str]) -> list[int]:
    get = snapshot.items.get
    return [i for i in map(get, ids) if i >= 0]


def recommend(snapshot: Snapshot, context: Sequence[str], k: int = 10,
              exclude: Iterable[str] = (), allowed: Iterable[str] | None = None,
              exclude_context: bool | None = None, exclude_ids: np.ndarray = _EMPTY) -> list[Scored]:
    """Top-k items for a context (newest last); popularity fills what co-visitation can't.

    Unknown context items are ignored; unknown excluded/allowed items match nothing.
    `exclude_ids`: more exclusions as this snapshot's int32 ids (e.g. hidden catalog items,
    converted once per snapshot instead of once per request).
    """
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    cfg = snapshot.config
    ctx_ids = _known(snapshot, context)[-cfg.max_context:]
    ctx = np.array(ctx_ids, dtype=np.int32)
    excluded = _known(snapshot, exclude)
    if cfg.exclude_context if exclude_context is None else exclude_context:
        excluded += ctx_ids
    use_allowed = allowed is not None
    # sorted(set()) beats np.unique by microseconds on the few ids a request carries
    allowed_arr = np.array(sorted(set(_known(snapshot, allowed))), dtype=np.int32) if use_allowed else _EMPTY
    exclude_arr = np.array(excluded, dtype=np.int32) if excluded else _EMPTY
    if len(exclude_ids):
        exclude_arr = np.concatenate([exclude_arr, exclude_ids])
    keys, vals, slots = _thread_scratch(scratch_size(snapshot, len(ctx_ids), len(exclude_arr)))
    out_items = np.empty(k, dtype=np.int32)
    out_scores = np.empty(k, dtype=np.float32)
    out_sources = np.empty(k, dtype=np.int8)
    n = kt.recommend_into(snapshot.starts, snapshot.ends, snapshot.indices, snapshot.scores,
                          snapshot.rank, snapshot.fill_order, ctx, cfg.recency, exclude_arr, allowed_arr,
                          use_allowed, keys, vals, slots, out_items, out_scores, out_sources)
    name = snapshot.items.name
    return [Scored(name(i), float(s), int(src))
            for i, s, src in zip(out_items[:n].tolist(), out_scores[:n].tolist(), out_sources[:n].tolist())]


def similar_items(snapshot: Snapshot, item_id: str, k: int = 10, exclude_ids: np.ndarray = _EMPTY) -> list[Scored]:
    """Items most often visited with `item_id` (itself excluded), popularity-filled."""
    return recommend(snapshot, [item_id], k, exclude_context=True, exclude_ids=exclude_ids)
