"""The alternatives that need the `bench` extra (scipy, implicit), for bench_alternatives.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from implicit.nearest_neighbours import ItemItemRecommender
from scipy.sparse import coo_matrix, csr_matrix

from alternatives import CountsCSR, context_weights, window_pairs
from covisit.core.config import ModelConfig
from covisit.core.synthetic import SyntheticLog


class ScipyCounts(CountsCSR):
    """The same pairs summed by scipy.sparse (coo_matrix(...).tocsr() adds up duplicates); a
    request is `weights @ M[ctx]`, a dense score per item, then np.argpartition."""

    def fit(self, log: SyntheticLog) -> None:
        n = len(self.names)
        rows, cols, vals = window_pairs(log, self.config)
        self.matrix = coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
        self.set_csr(self.matrix.indptr, self.matrix.indices, self.matrix.data)

    def recommend(self, context: Sequence[str], k: int) -> list[tuple[str, float]]:
        ctx, weights = self.context(context)
        scores = weights @ self.matrix[ctx]
        scores[ctx] = 0.0  # the context is left out
        return self.top(np.arange(len(scores)), scores, k)


class ImplicitItemItem:
    """implicit's item-item model, fitted on the sessions x items matrix of the same events
    (a cell is the sum of its events' weights); a request is a one-row user_items of the
    context items, weighted by recency as covisit weighs them. Library defaults otherwise:
    K=20 neighbours per item, all cores for the fit (num_threads=0)."""

    def __init__(self, model: ItemItemRecommender, config: ModelConfig, names: Sequence[str]):
        self.model, self.config, self.names = model, config, names
        self.ids = {name: i for i, name in enumerate(names)}

    def fit(self, log: SyntheticLog) -> None:
        shape = (int(log.seqs.max()) + 1, len(self.names))
        sessions = coo_matrix((log.weights, (log.seqs, log.items)), shape=shape).tocsr()
        self.model.fit(sessions, show_progress=False)

    def nbytes(self) -> int:
        m = self.model.similarity
        return m.data.nbytes + m.indices.nbytes + m.indptr.nbytes

    def recommend(self, context: Sequence[str], k: int) -> list[tuple[str, float]]:
        get = self.ids.get
        ctx = [i for i in map(get, context) if i is not None][-self.config.max_context:]
        weights = context_weights(self.config, len(ctx))
        row = csr_matrix((weights, ctx, [0, len(ctx)]), shape=(1, len(self.names)))
        ids, scores = self.model.recommend(0, row, N=k, filter_already_liked_items=True)
        names = self.names
        return [(names[i], s) for i, s in zip(ids.tolist(), scores.tolist())]
