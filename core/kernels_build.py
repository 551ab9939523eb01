"""Numba kernels that build the model: emit co-visitation pairs, merge them into exact counts,
and turn exact counts into the pruned, normalised serving CSR.

All `nogil=True`, so a background build never stalls serving threads. Exact counts are float64
and every pair is added to its cell in log order, in batch and incremental builds alike: that is
what makes an incremental update bit-identical to one batch build of the whole log.
"""

import math

import numpy as np
from numba import njit, prange

from covisit.core.kernels_topk import heap_push, heap_sort_best_first

DIST_NONE = 0  # every pair in the window weighs the same
DIST_INVERSE = 1  # a pair d steps apart weighs 1/d
DIST_LINEAR = 2  # (W - d + 1) / W

SIM_RAW = 0
SIM_COSINE = 1
SIM_JACCARD = 2
SIM_LIFT = 3
SIM_LLR = 4
SIM_CONDITIONAL = 5  # count / row total: P(next = j | i)


@njit(nogil=True, cache=True)
def _distance_weight(mode, d, window):
    if mode == DIST_INVERSE:
        return 1.0 / d
    if mode == DIST_LINEAR:
        return (window - d + 1.0) / window
    return 1.0


@njit(nogil=True, cache=True)
def emit_pairs(seqs, items, weights, times, hist_items, hist_w, hist_n, last_time, uses_gap,
               window, backward, dist_mode, gap, half_life, anchor,
               out_rows, out_cols, out_vals, pop):
    """Walk events in log order and write the (row, col, value) pairs they create.

    Per sequence s the state is its last `window` items (ring buffer hist_items[s] / hist_w[s],
    hist_n[s] events so far) and last event time; it is updated in place, so the next call
    links its first events to the items this call saw last. A consecutive repeat of the same
    item is one visit (no self pair; the visit keeps the larger weight). `pop` gets each event's
    weight. out_* need room for len(items) * window * (2 if backward else 1) pairs.
    Returns the number of pairs written.
    """
    n = 0
    for e in range(items.shape[0]):
        s = seqs[e]
        b = items[e]
        wb = weights[e]
        t = times[e]
        if uses_gap[s] and hist_n[s] > 0 and t - last_time[s] > gap:
            hist_n[s] = 0  # a new session of this user
        last_time[s] = t
        decay = 1.0 if half_life <= 0.0 else 2.0 ** ((t - anchor) / half_life)
        pop[b] += wb * decay
        cnt = hist_n[s]
        if cnt > 0:
            last = (cnt - 1) % window
            if hist_items[s, last] == b:
                hist_w[s, last] = max(hist_w[s, last], wb)
                continue
        for d in range(1, min(cnt, window) + 1):
            slot = (cnt - d) % window
            a = hist_items[s, slot]
            if a == b:
                continue
            dw = _distance_weight(dist_mode, d, window) * decay
            out_rows[n] = a
            out_cols[n] = b
            out_vals[n] = wb * dw
            n += 1
            if backward > 0.0:
                out_rows[n] = b
                out_cols[n] = a
                out_vals[n] = backward * hist_w[s, slot] * dw
                n += 1
        slot = cnt % window
        hist_items[s, slot] = b
        hist_w[s, slot] = wb
        hist_n[s] = cnt + 1
    return n


@njit(nogil=True, cache=True, parallel=True)
def merge_pairs(indptr, indices, data, n_rows, n_cols, rows, cols, vals, n_threads):
    """Add pairs to a CSR of exact counts; returns the new CSR.

    Each cell starts from its old value and adds its pairs in the order given; a row keeps
    its columns in order of first appearance. So the result does not depend on how a log
    was cut into batches. Rows are merged in `n_threads` independent chunks.
    """
    old_rows = indptr.shape[0] - 1
    old_nnz = indptr[old_rows]
    n_pairs = rows.shape[0]
    # Stable counting sort of the pairs by row.
    start = np.zeros(n_rows + 1, dtype=np.int64)
    for p in range(n_pairs):
        start[rows[p] + 1] += 1
    for r in range(n_rows):
        start[r + 1] += start[r]
    fill = start[:-1].copy()
    bcols = np.empty(n_pairs, dtype=np.int32)
    bvals = np.empty(n_pairs, dtype=np.float64)
    for p in range(n_pairs):
        q = fill[rows[p]]
        bcols[q] = cols[p]
        bvals[q] = vals[p]
        fill[rows[p]] = q + 1

    # Merge each touched row into its own region of a scratch buffer; a row can grow at most
    # by its number of pairs, so region r starts at old_start(r) + start[r].
    lengths = np.empty(n_rows, dtype=np.int64)
    scratch_i = np.empty(old_nnz + n_pairs, dtype=np.int32)
    scratch_d = np.empty(old_nnz + n_pairs, dtype=np.float64)
    chunk = (n_rows + n_threads - 1) // n_threads
    for t in prange(n_threads):
        seen = np.full(n_cols, -1, dtype=np.int32)  # row that last saw the column
        where = np.empty(n_cols, dtype=np.int32)  # its position in that row
        for r in range(t * chunk, min(n_rows, (t + 1) * chunk)):
            lo = indptr[min(r, old_rows)]
            hi = indptr[r + 1] if r < old_rows else lo
            m = hi - lo
            lengths[r] = m
            if start[r] == start[r + 1]:
                continue
            out = lo + start[r]
            for q in range(m):
                c = indices[lo + q]
                scratch_i[out + q] = c
                scratch_d[out + q] = data[lo + q]
                seen[c] = r
                where[c] = q
            for q in range(start[r], start[r + 1]):
                c = bcols[q]
                if seen[c] != r:
                    seen[c] = r
                    where[c] = m
                    scratch_i[out + m] = c
                    scratch_d[out + m] = 0.0
                    m += 1
                scratch_d[out + where[c]] += bvals[q]
            lengths[r] = m

    new_indptr = np.zeros(n_rows + 1, dtype=np.int64)
    for r in range(n_rows):
        new_indptr[r + 1] = new_indptr[r] + lengths[r]
    new_indices = np.empty(new_indptr[n_rows], dtype=np.int32)
    new_data = np.empty(new_indptr[n_rows], dtype=np.float64)
    for t in prange(n_threads):
        for r in range(t * chunk, min(n_rows, (t + 1) * chunk)):
            out, m = new_indptr[r], lengths[r]
            if start[r] == start[r + 1]:  # untouched: straight from the old arrays
                lo = indptr[r] if r < old_rows else 0
                src_i, src_d = indices[lo: lo + m], data[lo: lo + m]
            else:
                lo = indptr[min(r, old_rows)] + start[r]
                src_i, src_d = scratch_i[lo: lo + m], scratch_d[lo: lo + m]
            new_indices[out: out + m] = src_i
            new_data[out: out + m] = src_d
    return new_indptr, new_indices, new_data


@njit(nogil=True, cache=True)
def row_col_sums(indptr, indices, data, n_cols):
    """Row totals, column totals and the grand total of a CSR."""
    n_rows = indptr.shape[0] - 1
    row_sum = np.zeros(n_rows, dtype=np.float64)
    col_sum = np.zeros(n_cols, dtype=np.float64)
    for r in range(n_rows):
        for q in range(indptr[r], indptr[r + 1]):
            row_sum[r] += data[q]
            col_sum[indices[q]] += data[q]
    return row_sum, col_sum, row_sum.sum()


@njit(nogil=True, cache=True)
def _xlogx(x):
    return x * math.log(x) if x > 0.0 else 0.0


@njit(nogil=True, cache=True)
def log_likelihood_ratio(k11, k12, k21, k22):
    """Dunning's G^2 for a 2x2 contingency table (Mahout's LLR similarity)."""
    total = k11 + k12 + k21 + k22
    cells = _xlogx(k11) + _xlogx(k12) + _xlogx(k21) + _xlogx(k22)
    rows = _xlogx(k11 + k12) + _xlogx(k21 + k22)
    cols = _xlogx(k11 + k21) + _xlogx(k12 + k22)
    return max(0.0, 2.0 * (cells - rows - cols + _xlogx(total)))


@njit(nogil=True, cache=True)
def similarity(method, c, r, s, total):
    """Score of a cell with count c, row total r, column total s."""
    if method == SIM_COSINE:
        return c / math.sqrt(r * s)
    if method == SIM_JACCARD:
        return c / (r + s - c)
    if method == SIM_LIFT:
        return c * total / (r * s)
    if method == SIM_LLR:
        return log_likelihood_ratio(c, r - c, s - c, max(0.0, total - r - s + c))
    if method == SIM_CONDITIONAL:
        return c / r
    return c


@njit(nogil=True, cache=True)
def prune_rows(indptr, indices, data, row_sum, col_sum, total, rank, method, top_n):
    """Serving CSR: each row's `top_n` best neighbours by similarity, best first, float32."""
    n_rows = indptr.shape[0] - 1
    out_indptr = np.zeros(n_rows + 1, dtype=np.int64)
    for r in range(n_rows):
        out_indptr[r + 1] = out_indptr[r] + min(indptr[r + 1] - indptr[r], top_n)
    out_indices = np.empty(out_indptr[n_rows], dtype=np.int32)
    out_scores = np.empty(out_indptr[n_rows], dtype=np.float32)
    for r in range(n_rows):
        lo, hi = out_indptr[r], out_indptr[r + 1]
        if lo == hi:
            continue
        heap_s = out_scores[lo:hi]
        heap_i = out_indices[lo:hi]
        size = 0
        for q in range(indptr[r], indptr[r + 1]):
            score = similarity(method, data[q], row_sum[r], col_sum[indices[q]], total)
            size = heap_push(heap_s, heap_i, size, np.float32(score), indices[q], rank)
        heap_sort_best_first(heap_s, heap_i, size, rank)
    return out_indptr, out_indices, out_scores
