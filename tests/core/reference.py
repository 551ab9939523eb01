"""Plain-Python twins of the Numba kernels: slow, obvious, and the oracle the kernels must match."""

from __future__ import annotations

import math

import numpy as np


def serving_arrays(snap) -> dict[str, np.ndarray]:
    """A snapshot's rows as a compact CSR, with its popularity arrays: what two snapshots must
    agree on to serve alike (their pools may differ)."""
    indptr, indices, scores = snap.csr()
    return {"indptr": indptr, "indices": indices, "scores": scores, "popularity": snap.popularity,
            "fill_order": snap.fill_order, "rank": snap.rank}


def count_pairs(events, window, backward=0.0, distance="inverse", gap=1800.0, half_life=0.0, anchor=0.0):
    """events: (sequence, item, weight, time, splits_at_gaps) in log order.

    Returns ({(a, b): count}, {item: popularity}), each cell summed in log order."""
    counts: dict[tuple[int, int], float] = {}
    pop: dict[int, float] = {}
    history: dict[object, list[list]] = {}  # sequence -> [[item, weight], ...] newest last
    last_time: dict[object, float] = {}
    for seq, b, wb, t, splits in events:
        hist = history.setdefault(seq, [])
        if splits and hist and t - last_time[seq] > gap:
            hist.clear()
        last_time[seq] = t
        decay = 1.0 if half_life <= 0 else 2.0 ** ((t - anchor) / half_life)
        pop[b] = pop.get(b, 0.0) + wb * decay
        if hist and hist[-1][0] == b:
            hist[-1][1] = max(hist[-1][1], wb)
            continue
        for d in range(1, min(len(hist), window) + 1):
            a, wa = hist[-d]
            if a == b:
                continue
            dw = {"none": 1.0, "inverse": 1.0 / d, "linear": (window - d + 1.0) / window}[distance] * decay
            counts[(a, b)] = counts.get((a, b), 0.0) + wb * dw
            if backward > 0:
                counts[(b, a)] = counts.get((b, a), 0.0) + backward * wa * dw
        hist.append([b, wb])
        del hist[:-window]
    return counts, pop


def to_csr(counts: dict, n_rows: int):
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    cells = sorted(counts)
    for a, _ in cells:
        indptr[a + 1] += 1
    return (np.cumsum(indptr), np.array([b for _, b in cells], dtype=np.int32),
            np.array([counts[c] for c in cells], dtype=np.float64))


def sort_rows(indptr, indices, data):
    """Columns sorted within each row (the kernels keep first-appearance order)."""
    indices, data = indices.copy(), data.copy()
    for r in range(len(indptr) - 1):
        lo, hi = indptr[r], indptr[r + 1]
        order = np.argsort(indices[lo:hi], kind="stable")
        indices[lo:hi], data[lo:hi] = indices[lo:hi][order], data[lo:hi][order]
    return indices, data


def table_find(slots, bits, row, column):
    """The offset of `column` in `row` (a row's column ids) by its hash table (2**bits slots,
    each a cell's offset or -1), probing from the top bits of column * 2**32 / golden ratio;
    None when the probe meets an empty slot first."""
    i = (int(column) * 2654435769 % 2 ** 32) >> (32 - bits)
    while slots[i] >= 0:
        if row[slots[i]] == column:
            return int(slots[i])
        i = (i + 1) % 2 ** bits
    return None


def _llr(k11, k12, k21, k22):
    def h(*xs):
        return sum(x * math.log(x) for x in xs if x > 0)
    return max(0.0, 2.0 * (h(k11, k12, k21, k22) - h(k11 + k12, k21 + k22) - h(k11 + k21, k12 + k22)
                           + h(k11 + k12 + k21 + k22)))


def similarity(method, c, r, s, total):
    return {
        "raw": lambda: c,
        "cosine": lambda: c / math.sqrt(r * s),
        "jaccard": lambda: c / (r + s - c),
        "lift": lambda: c * total / (r * s),
        "llr": lambda: _llr(c, r - c, s - c, max(0.0, total - r - s + c)),
        "conditional": lambda: c / r,
    }[method]()


def prune(counts: dict, method: str, top_n: int, rank):
    """{row: [(item, float32 score), ...] best first}, ties to the better-ranked item."""
    rows: dict[int, list] = {}
    col_sum: dict[int, float] = {}
    for (a, b), c in counts.items():
        rows.setdefault(a, []).append((b, c))
        col_sum[b] = col_sum.get(b, 0.0) + c
    total = sum(counts.values())
    out = {}
    for a, cells in rows.items():
        r = sum(c for _, c in cells)
        scored = [(b, np.float32(similarity(method, c, r, col_sum[b], total))) for b, c in cells]
        out[a] = sorted(scored, key=lambda x: (-x[1], rank[x[0]]))[:top_n]
    return out


def recommend(indptr, indices, scores, rank, fill_order, ctx, recency, exclude, allowed, k):
    """[(item, score, source)] with float32 sums in the kernel's order (newest context first)."""
    acc: dict[int, np.float32] = {}
    weight = np.float32(1.0)
    for c in reversed(ctx):
        for q in range(indptr[c], indptr[c + 1]):
            item = int(indices[q])
            term = weight * scores[q]
            acc[item] = acc[item] + term if item in acc else term
        weight = weight * np.float32(recency)
    ok = [i for i in acc if i not in exclude and (allowed is None or i in allowed)]
    best = sorted(ok, key=lambda i: (-acc[i], rank[i]))[:k]
    out = [(i, float(acc[i]), 0) for i in best]
    for i in fill_order:
        if len(out) >= k:
            break
        i = int(i)
        if i not in acc and i not in exclude and (allowed is None or i in allowed):
            out.append((i, 0.0, 2))
    return out
