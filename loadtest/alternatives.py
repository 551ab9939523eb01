"""What a user might write instead of covisit for the same job, for bench_alternatives.py: the
original design's dict-of-dicts counter, and the same counts in plain NumPy.

Each counts exactly the pairs covisit's exact store counts for a ModelConfig (see
kernels_build._walk), so that the bench compares one job done several ways, and serves a
request as covisit does by default: the context's rows summed with recency weights, each row
normalised by its total (the "conditional" similarity), the context itself left out. Unlike
covisit they serve from the whole exact rows, not from rows pruned to top_n.

NumPy only, so the unit tests can import it; the scipy and implicit ones are in
alternatives_sparse.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter

import numpy as np

from covisit.core.config import ModelConfig
from covisit.core.synthetic import SyntheticLog


def check_config(config: ModelConfig) -> None:
    """Refuse what these formulations leave out, rather than count something else."""
    if config.half_life != 0 or config.similarity != "conditional":
        raise ValueError("the alternatives count without time decay and score conditionally: "
                         "need half_life=0 and similarity='conditional'")


def distance_weights(config: ModelConfig) -> list[float]:
    """The weight of a pair d visits apart, at index d (1..window), as covisit gives it."""
    w = config.window
    by_mode = {"none": lambda d: 1.0, "inverse": lambda d: 1.0 / d,
               "linear": lambda d: (w - d + 1.0) / w}[config.distance]
    return [0.0] + [by_mode(d) for d in range(1, w + 1)]


def context_weights(config: ModelConfig, n: int) -> list[float]:
    """The weight of each of `n` context items, oldest first: recency**age, newest 1."""
    return [config.recency ** (n - 1 - a) for a in range(n)]


def window_pairs(log: SyntheticLog, config: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair covisit counts for `config`, as (rows, cols, values), unsummed.

    Within a sequence, a consecutive repeat of an item is one visit. A visit links to each of
    the `window` visits before it that holds another item: forward with its own first event's
    weight, backward with the earlier visit's largest weight (its repeats have all happened by
    then), both times the distance weight. Sequences never split at gaps here, as
    update_encoded counts them by default.
    """
    check_config(config)
    order = np.argsort(log.seqs, kind="stable")  # each sequence's events together, in log order
    seqs, items, weights = log.seqs[order], log.items[order], log.weights[order]
    first = np.flatnonzero(np.r_[True, (seqs[1:] != seqs[:-1]) | (items[1:] != items[:-1])])
    seqs, items = seqs[first], items[first]
    first_weight = weights[first]
    top_weight = np.maximum.reduceat(weights, first)
    parts = []  # (rows, cols, values) of each distance and direction
    for d, dw in enumerate(distance_weights(config)[1:], start=1):
        linked = (seqs[d:] == seqs[:-d]) & (items[d:] != items[:-d])
        a, b = items[:-d][linked], items[d:][linked]
        parts.append((a, b, first_weight[d:][linked] * dw))
        if config.backward > 0:
            parts.append((b, a, config.backward * top_weight[:-d][linked] * dw))
    rows, cols, vals = zip(*parts)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


class DictOfDicts:
    """The original design: `counts[prev][next] += weight` over a session's events, keyed by
    item id strings, and a full sort of the candidates per request.

    The original counted consecutive transitions only; this takes window, backward and distance
    from the config so that it counts what covisit counts (window=1, backward=0 is the original
    counter). The original's offline baseline scored the context's last item alone; its request
    path summed the context's rows with recency weights, the reading taken here, because it is
    what covisit does and so the same work.
    """

    def __init__(self, config: ModelConfig, names: Sequence[str]):
        check_config(config)
        self.config, self.names = config, names
        self.ids = {name: i for i, name in enumerate(names)}
        self.counts: dict[str, dict[str, float]] = {}
        self.totals: dict[str, float] = {}

    def fit(self, seqs: Sequence[int], items: Sequence[str], weights: Sequence[float]) -> None:
        """Count events given in log order (sequence ids, item id strings, event weights)."""
        cfg, counts = self.config, self.counts
        window, backward = cfg.window, cfg.backward
        dist = distance_weights(cfg)
        recent: dict[int, list[list]] = {}  # sequence -> its last visits [item, weight], newest last
        for s, b, wb in zip(seqs, items, weights):
            visits = recent.setdefault(s, [])
            if visits and visits[-1][0] == b:  # a repeat: one visit, the larger weight
                visits[-1][1] = max(visits[-1][1], wb)
                continue
            for d in range(1, len(visits) + 1):
                a, wa = visits[-d]
                if a == b:
                    continue
                row = counts.setdefault(a, {})
                row[b] = row.get(b, 0.0) + wb * dist[d]
                if backward > 0:
                    row = counts.setdefault(b, {})
                    row[a] = row.get(a, 0.0) + backward * wa * dist[d]
            visits.append([b, wb])
            if len(visits) > window:
                del visits[0]
        self.totals = {a: sum(row.values()) for a, row in counts.items()}

    def row(self, item: int) -> dict[int, float]:
        """Row `item`'s counts by dense id (for checks against covisit's)."""
        ids = self.ids
        return {ids[b]: c for b, c in self.counts.get(self.names[item], {}).items()}

    def recommend(self, context: Sequence[str], k: int) -> list[tuple[str, float]]:
        ctx = [c for c in context if c in self.ids][-self.config.max_context:]
        scores: dict[str, float] = {}
        for c, weight in zip(ctx, context_weights(self.config, len(ctx))):
            row = self.counts.get(c)
            if row is None:
                continue
            w = weight / self.totals[c]
            for j, n in row.items():
                scores[j] = scores.get(j, 0.0) + w * n
        for c in ctx:
            scores.pop(c, None)
        return sorted(scores.items(), key=itemgetter(1), reverse=True)[:k]


class CountsCSR:
    """Exact counts as a CSR (indptr int64, indices int32, data float64) with row totals; the
    subclasses say how they are counted and how a request combines the context's rows."""

    def __init__(self, config: ModelConfig, names: Sequence[str]):
        check_config(config)
        self.config, self.names = config, names
        self.ids = {name: i for i, name in enumerate(names)}
        self.indptr = self.indices = self.data = self.totals = np.empty(0)

    def set_csr(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        self.indptr, self.indices, self.data = indptr, indices, data
        linked = np.flatnonzero(np.diff(indptr))
        self.totals = np.zeros(len(indptr) - 1)
        self.totals[linked] = np.add.reduceat(data, indptr[linked])

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.indptr, self.indices, self.data, self.totals))

    def row(self, item: int) -> dict[int, float]:
        lo, hi = self.indptr[item], self.indptr[item + 1]
        return dict(zip(self.indices[lo:hi].tolist(), self.data[lo:hi].tolist()))

    def known(self, context: Sequence[str]) -> np.ndarray:
        """The context's known items as ids, the newest max_context."""
        get = self.ids.get
        return np.array([i for i in map(get, context) if i is not None][-self.config.max_context:],
                        dtype=np.int64)

    def summed(self, ctx: np.ndarray, spans: list[slice], weights, values: np.ndarray,
               k: int) -> list[tuple[str, float]]:
        """The top k of the context's rows (`spans` of indices and `values`) summed with their
        `weights`, per item (np.unique, np.bincount), the context left out."""
        cols = np.concatenate([self.indices[s] for s in spans])
        vals = np.concatenate([values[s] * w for s, w in zip(spans, weights)])
        items, where = np.unique(cols, return_inverse=True)
        scores = np.bincount(where, weights=vals)
        scores[np.isin(items, ctx)] = 0.0
        return self.top(items, scores, k)

    def context(self, context: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The context's known items (newest max_context) and the weight of each one's counts:
        recency**age over its row total (0 for an item without links)."""
        ctx = self.known(context)
        totals = self.totals[ctx]
        weights = np.divide(context_weights(self.config, len(ctx)), totals,
                            out=np.zeros(len(ctx)), where=totals > 0)
        return ctx, weights

    def top(self, items: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The k best-scoring `items` (scores <= 0 are not candidates), best first."""
        if len(scores) > k:
            best = np.argpartition(scores, len(scores) - k)[-k:]
            items, scores = items[best], scores[best]
        order = np.argsort(-scores, kind="stable")
        names = self.names
        return [(names[i], s) for i, s in zip(items[order].tolist(), scores[order].tolist()) if s > 0]


class NumpyCounts(CountsCSR):
    """Pairs as int64 keys row * n + col, summed by np.unique and np.bincount into the CSR;
    a request gathers the context's rows, sums them per column the same way, and takes the
    top k with np.argpartition."""

    def fit(self, log: SyntheticLog) -> None:
        n = len(self.names)
        rows, cols, vals = window_pairs(log, self.config)
        cells, where = np.unique(rows.astype(np.int64) * n + cols, return_inverse=True)
        data = np.bincount(where, weights=vals)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(cells // n, minlength=n), out=indptr[1:])
        self.set_csr(indptr, (cells % n).astype(np.int32), data)

    def recommend(self, context: Sequence[str], k: int) -> list[tuple[str, float]]:
        ctx, weights = self.context(context)
        if not len(ctx):
            return []
        spans = [slice(self.indptr[c], self.indptr[c + 1]) for c in ctx]
        return self.summed(ctx, spans, weights, self.data, k)


class NumpyServing(CountsCSR):
    """covisit's own serving snapshot (rows pruned to top_n, scores already normalised), with
    each request done in NumPy instead of the compiled kernel: the same rows gathered, weighted
    by recency, summed per item (np.unique, np.bincount) and cut with np.argpartition. Beside
    covisit this is what the Numba request kernel buys, on identical data."""

    def __init__(self, snapshot):
        super().__init__(snapshot.config, snapshot.items.names())
        self.starts, self.ends = snapshot.starts, snapshot.ends
        self.indices, self.scores = snapshot.indices, snapshot.scores

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.starts, self.ends, self.indices, self.scores))

    def recommend(self, context: Sequence[str], k: int) -> list[tuple[str, float]]:
        ctx = self.known(context)
        if not len(ctx):
            return []
        weights = np.array(context_weights(self.config, len(ctx)), dtype=np.float32)
        spans = [slice(a, b) for a, b in zip(self.starts[ctx].tolist(), self.ends[ctx].tolist())]
        return self.summed(ctx, spans, weights, self.scores, k)


def sample_rows(indptr: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` random rows with links and the 10 longest (where sums are longest)."""
    lengths = np.diff(indptr)
    linked = np.flatnonzero(lengths)
    rng = np.random.default_rng(seed)
    picked = rng.choice(linked, size=min(n, len(linked)), replace=False)
    return np.union1d(picked, np.argsort(lengths)[-10:])


def check_counts(name: str, exact: tuple[np.ndarray, np.ndarray, np.ndarray],
                 row_counts: Callable[[int], dict[int, float]], rows: np.ndarray,
                 rtol: float = 1e-6) -> None:
    """Raise AssertionError unless `row_counts` gives covisit's exact counts (its csr()) on
    every one of `rows`: the same columns, each count within `rtol`."""
    indptr, indices, data = exact
    for r in rows.tolist():
        lo, hi = indptr[r], indptr[r + 1]
        want = dict(zip(indices[lo:hi].tolist(), data[lo:hi].tolist()))
        got = row_counts(r)
        if got.keys() != want.keys():
            raise AssertionError(f"{name}: row {r} has columns {sorted(got)[:10]}..., covisit "
                                 f"{sorted(want)[:10]}... ({len(got)} against {len(want)})")
        for c, count in want.items():
            if abs(got[c] - count) > rtol * abs(count):
                raise AssertionError(f"{name}: count ({r}, {c}) is {got[c]!r}, covisit's {count!r}")
