"""Offline evaluation: the session-based next-item protocol of Ludewig & Jannach (session-rec).

Steps (see the README): sessions -> drop consecutive repeats -> iterate (items with < 5
occurrences, sessions shorter than 2) -> temporal split -> for every test prefix rank the whole
training catalog and look for the next item. Everything works in catalog index space, where
index = popularity rank (most train events first, then item id), so the protocol's tie-break
is simply "lower index first" for every model.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from covisit.core import kernels_topk as kt
from covisit.core.config import ModelConfig
from covisit.core.events import Event
from covisit.core.interning import IdMap
from covisit.core.model import CoVisitModel
from covisit.core.scoring import new_scratch, scratch_size

DAY = 86400.0
CUTOFFS = (20, 10)


@dataclass
class Session:
    key: str
    items: list[str]
    times: list[float]
    types: list[str]

    @property
    def start(self) -> float:
        return self.times[0]

    def keep(self, mask: Iterable[bool]) -> Session:
        kept = [i for i, m in enumerate(mask) if m]
        return Session(self.key, [self.items[i] for i in kept], [self.times[i] for i in kept],
                       [self.types[i] for i in kept])


def sessions_from_events(events: Iterable[Event], session_gap: float) -> list[Session]:
    """Group events into sessions: by session_id, else a user's events split at `session_gap`.

    Events are ordered by time (stable: ties keep log order)."""
    ordered = sorted(events, key=lambda e: e.timestamp)
    open_sessions: dict[str, Session] = {}
    sessions: list[Session] = []
    for ev in ordered:
        key = ev.sequence_key()
        current = open_sessions.get(key)
        if current is None or (not ev.session_id and ev.timestamp - current.times[-1] > session_gap):
            current = Session(f"{key}#{len(sessions)}", [], [], [])
            open_sessions[key] = current
            sessions.append(current)
        current.items.append(ev.item_id)
        current.times.append(ev.timestamp)
        current.types.append(ev.event_type)
    return sessions


def clean(sessions: list[Session], min_support: int = 5) -> list[Session]:
    """Drop consecutive repeats, then items seen < min_support times and sessions < 2, until stable."""
    sessions = [s.keep([i == 0 or s.items[i] != s.items[i - 1] for i in range(len(s.items))])
                for s in sessions]
    while True:
        counts = Counter(item for s in sessions for item in s.items)
        if min(counts.values(), default=min_support) >= min_support and all(len(s.items) >= 2 for s in sessions):
            return sessions
        sessions = [s for s in (s.keep([counts[i] >= min_support for i in s.items]) for s in sessions)
                    if len(s.items) >= 2]


@dataclass
class Split:
    train: list[Session]
    test: list[Session]
    catalog: IdMap  # train items; id = popularity rank

    def stats(self) -> dict[str, int]:
        return {
            "train_sessions": len(self.train),
            "test_sessions": len(self.test),
            "test_predictions": sum(len(s.items) - 1 for s in self.test),
            "items": len(self.catalog),
        }


def temporal_split(sessions: list[Session], test_days: float | None = None,
                   test_fraction: float | None = None) -> Split:
    """Test = sessions starting at or after the cut; test items unknown to train are removed."""
    if (test_days is None) == (test_fraction is None):
        raise ValueError("give exactly one of test_days and test_fraction")
    if not sessions:
        raise ValueError("no sessions left after cleaning")
    t_end = max(max(s.times) for s in sessions)
    if test_days is not None:
        cut = t_end - test_days * DAY
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        t_min = min(min(s.times) for s in sessions)
        cut = t_min + (1 - test_fraction) * (t_end - t_min)
    train = [s for s in sessions if s.start < cut]
    counts = Counter(item for s in train for item in s.items)
    catalog = IdMap(sorted(counts, key=lambda item: (-counts[item], item)))
    test = []
    for s in sessions:
        if s.start >= cut:
            s = s.keep([item in catalog for item in s.items])
            if len(s.items) >= 2:
                test.append(s)
    return Split(train, test, catalog)


@dataclass
class Tasks:
    """Every (prefix, next item) of the test sessions, in catalog ids."""
    ctx_indptr: np.ndarray  # int64; prefix q is ctx_items[ctx_indptr[q]:ctx_indptr[q + 1]]
    ctx_items: np.ndarray  # int32, newest last, at most max_context per prefix
    last: np.ndarray  # int32, the newest item of each prefix
    target: np.ndarray  # int32


def prediction_tasks(split: Split, max_context: int) -> Tasks:
    indptr, flat, last, target = [0], [], [], []
    for s in split.test:
        ids = [split.catalog.get(item) for item in s.items]
        for t in range(1, len(ids)):
            flat.extend(ids[max(0, t - max_context):t])
            indptr.append(len(flat))
            last.append(ids[t - 1])
            target.append(ids[t])
    return Tasks(np.array(indptr, dtype=np.int64), np.array(flat, dtype=np.int32),
                 np.array(last, dtype=np.int32), np.array(target, dtype=np.int32))


def metrics(topk: np.ndarray, target: np.ndarray, n_items: int) -> dict[str, float]:
    """HR, MRR, NDCG, P, COV and Gini at each cutoff, from ranked lists (-1 = empty slot)."""
    out = {}
    for k in CUTOFFS:
        lists = topk[:, :k]
        hit = lists == target[:, None]
        found = hit.any(axis=1)
        rank = hit.argmax(axis=1) + 1
        shown = lists[lists >= 0]
        exposure = np.sort(np.bincount(shown, minlength=n_items)).astype(np.float64)
        i = np.arange(1, n_items + 1)
        gini = float(((2 * i - n_items - 1) * exposure).sum() / (n_items * exposure.sum())) if shown.size else 0.0
        out.update({
            f"HR@{k}": float(found.mean()),
            f"MRR@{k}": float(np.where(found, 1.0 / rank, 0.0).mean()),
            f"NDCG@{k}": float(np.where(found, 1.0 / np.log2(rank + 1), 0.0).mean()),
            f"P@{k}": float(found.mean() / k),
            f"COV@{k}": float(np.unique(shown).size / n_items),
            f"Gini@{k}": gini,
        })
    return out


def rank_pop(split: Split, tasks: Tasks, k: int) -> np.ndarray:
    """POP: the k most frequent training items for every prefix."""
    top = np.arange(min(k, len(split.catalog)), dtype=np.int32)
    return _pad(np.broadcast_to(top, (len(tasks.target), len(top))), k)


def rank_last_item(split: Split, tasks: Tasks, k: int) -> np.ndarray:
    """LAST-ITEM: the k most frequent successors of the newest item, padded with POP."""
    n = len(split.catalog)
    pairs = [(split.catalog.get(a), split.catalog.get(b))
             for s in split.train for a, b in zip(s.items, s.items[1:])]
    a, b = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    cells, counts = np.unique(a * n + b, return_counts=True)
    src, dst = cells // n, cells % n
    order = np.lexsort((dst, -counts, src))  # by source, then count desc, then popularity
    table = np.full((n, k), -1, dtype=np.int32)
    fill = np.zeros(n, dtype=np.int64)
    for s, d in zip(src[order].tolist(), dst[order].tolist()):
        if fill[s] < k:
            table[s, fill[s]] = d
            fill[s] += 1
    for s in np.nonzero(fill < k)[0]:
        have = set(table[s, :fill[s]].tolist())
        pad = [i for i in range(n) if i not in have][: k - fill[s]]
        table[s, fill[s]: fill[s] + len(pad)] = pad
    return table[tasks.last]


def rank_covisit(split: Split, tasks: Tasks, k: int, config: ModelConfig, batch: int = 4096,
                 progress: bool = False) -> np.ndarray:
    """covisit trained on the train sessions; ties and fill by the protocol's popularity."""
    model = CoVisitModel(config)
    model.items = split.catalog.copy()  # catalog order, so model ids = catalog ids
    events = [Event(user_id=s.key, item_id=item, event_type=kind, timestamp=t, session_id=s.key)
              for s in split.train for item, t, kind in zip(s.items, s.times, s.types)]
    for lo in tqdm(range(0, len(events), 50_000), desc="train", unit="batch", disable=not progress):
        model.update(events[lo: lo + 50_000])
    snap = model.snapshot()
    protocol_order = np.arange(len(split.catalog), dtype=np.int32)
    snap = dataclasses.replace(snap, rank=protocol_order, fill_order=protocol_order)
    n_q = len(tasks.target)
    out_items = np.full((n_q, k), -1, dtype=np.int32)
    out_scores = np.empty((n_q, k), dtype=np.float32)
    out_sources = np.empty((n_q, k), dtype=np.int8)
    out_n = np.empty(n_q, dtype=np.int64)
    keys, vals, slots = new_scratch(scratch_size(snap, config.max_context, config.max_context))
    for lo in tqdm(range(0, n_q, batch), desc="rank", unit="batch", disable=not progress):
        hi = min(lo + batch, n_q)
        kt.recommend_batch(snap.starts, snap.ends, snap.indices, snap.scores, snap.rank,
                           snap.fill_order, tasks.ctx_indptr[lo: hi + 1], tasks.ctx_items,
                           config.max_context, config.recency, config.exclude_context, keys, vals, slots,
                           out_items[lo:hi], out_scores[lo:hi], out_sources[lo:hi], out_n[lo:hi])
    return out_items


def _pad(lists: np.ndarray, k: int) -> np.ndarray:
    out = np.full((lists.shape[0], k), -1, dtype=np.int32)
    out[:, : lists.shape[1]] = lists
    return out


RANKERS: dict[str, Callable[..., np.ndarray]] = {"POP": rank_pop, "LAST-ITEM": rank_last_item}


def evaluate(split: Split, config: ModelConfig, progress: bool = False) -> dict:
    """The whole comparison: split statistics, then metrics for covisit and the baselines."""
    k = max(CUTOFFS)
    tasks = prediction_tasks(split, config.max_context)
    n = len(split.catalog)
    results = {"covisit": metrics(rank_covisit(split, tasks, k, config, progress=progress), tasks.target, n)}
    for name, ranker in RANKERS.items():
        results[name] = metrics(ranker(split, tasks, k), tasks.target, n)
    return {"split": split.stats(), "models": results}
