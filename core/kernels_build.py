"""Numba kernels that build the model: count co-visitation pairs into the exact-count store, and
turn exact counts into the pruned, normalised serving CSR.

The exact store keeps row r as a slice [starts[r]:ends[r]] of two pools, indices (int32) and
data (float64), with room up to limits[r] and free space at the pools' tail. That is so that a
small batch need not copy the whole store (at 50M links, 600 MB of memory traffic per batch,
which slows the serving threads): bucket_pairs walks the batch into per-row buckets and
merge_in_place adds each bucket to its row in place, moving a row that outgrows its room to
the tail; when the tail is full, pack_rows copies the rows into new pools without the gaps. A
long row keeps a hash table of its columns (build_tables), so that a few pairs cost a few probes,
not a pass over every cell of the row.
A large batch, or the first, goes the batch way instead: add_events builds a new compact CSR,
in parallel.

All `nogil=True`, so a background build never stalls serving threads. Exact counts are float64
and every pair is added to its cell in log order, whichever way and however cut a log is
counted: that is what makes an incremental update bit-identical to one batch build of the
whole log.

What a batch build costs here is memory traffic: fresh pages (a first touch costs more than the
work done on them), and cache misses on per-sequence state and per-row positions that are read
in random order. So pairs are written once, straight into their row's bucket; the merged rows
are packed inside the bucket buffer itself, which is then shrunk in place; and the event walks
prefetch the state of the events a little ahead.
"""

import math

import numpy as np
from numba import njit, prange

from covisit.core.kernels_topk import _worse, heap_push, heap_sort_best_first
from covisit.core.prefetch import prefetch_read as _prefetch_read
from covisit.core.prefetch import prefetch_write as _prefetch

DIST_NONE = 0  # every pair in the window weighs the same
DIST_INVERSE = 1  # a pair d steps apart weighs 1/d
DIST_LINEAR = 2  # (W - d + 1) / W

SIM_RAW = 0
SIM_COSINE = 1
SIM_JACCARD = 2
SIM_LIFT = 3
SIM_LLR = 4
SIM_CONDITIONAL = 5  # count / row total: P(next = j | i)


AHEAD = 16  # how far ahead (events, or pairs in a merge) a prefetch runs; best of 8..64

@njit(nogil=True, cache=True)
def _distance_weight(mode, d, window):
    if mode == DIST_INVERSE:
        return 1.0 / d
    if mode == DIST_LINEAR:
        return (window - d + 1.0) / window
    return 1.0


@njit(nogil=True, cache=True)
def _walk(lo, hi, seqs, items, weights, times, hist_items, hist_w, hist_n, last_time, uses_gap,
          backward, dist_mode, gap, half_life, anchor, emit, per_row, cols, vals, pop):
    """Walk events lo..hi in log order, moving the sequence state along; returns the pairs made.

    The state of sequence s is its last `window` items (ring buffer hist_items[s] / hist_w[s],
    hist_n[s] visits so far) and its last event time. A gap longer than `gap` starts a new
    session of a user. A consecutive repeat of the same item is one visit (no pair; the visit
    keeps the larger weight). Otherwise item b links to each of the last `window` items a != b:
    pair (a, b), and (b, a) if `backward`.
    Counting walk (not `emit`): per_row[r] += the pairs of row r, pop[item] += event weight.
    Emitting walk: each pair's (col, value) goes to cols/vals at per_row[row], which advances.
    """
    window = hist_items.shape[1]
    n_pairs = 0
    for e in range(lo, hi):
        if e + AHEAD < hi:  # prefetch the state and row entry an event ahead will use
            s = seqs[e + AHEAD]
            _prefetch(hist_items, s)
            _prefetch(hist_w, s)
            _prefetch(hist_n, s)
            _prefetch(last_time, s)
            _prefetch(uses_gap, s)
            _prefetch(per_row, items[e + AHEAD])
            if not emit:
                _prefetch(pop, items[e + AHEAD])
        if emit and e + AHEAD // 2 < hi:  # and the bucket slot of its reverse pair
            q = per_row[items[e + AHEAD // 2]]
            _prefetch(cols, q)
            _prefetch(vals, q)
        s = seqs[e]
        b = items[e]
        wb = weights[e]
        t = times[e]
        decay = 1.0 if half_life <= 0.0 else 2.0 ** ((t - anchor) / half_life)
        if not emit:
            pop[b] += wb * decay
        cnt = hist_n[s]
        if cnt > 0 and uses_gap[s] and t - last_time[s] > gap:
            cnt = 0
        last_time[s] = t
        if cnt > 0:
            last = (cnt - 1) % window
            if hist_items[s, last] == b:
                hist_w[s, last] = max(hist_w[s, last], wb)
                continue
        linked = 0
        for d in range(1, min(cnt, window) + 1):
            slot = (cnt - d) % window
            a = hist_items[s, slot]
            if a == b:
                continue
            linked += 1
            if not emit:
                per_row[a] += 1
                continue
            dw = _distance_weight(dist_mode, d, window) * decay
            q = per_row[a]
            cols[q] = b
            vals[q] = wb * dw
            per_row[a] = q + 1
            if backward > 0.0:
                q = per_row[b]
                cols[q] = a
                vals[q] = backward * hist_w[s, slot] * dw
                per_row[b] = q + 1
        if backward > 0.0:
            if not emit:
                per_row[b] += linked
            linked *= 2
        n_pairs += linked
        slot = cnt % window
        hist_items[s, slot] = b
        hist_w[s, slot] = wb
        hist_n[s] = cnt + 1
    return n_pairs


@njit(nogil=True, cache=True)
def count_pairs(seqs, items, weights, times, bounds, hist_items, hist_w, hist_n, last_time,
                uses_gap, backward, gap, half_life, anchor, start_items, start_w, start_n,
                start_time, counts, pop):
    """The counting walk over all events: how many pairs each row gets, per chunk of events.

    The events are cut into chunks at `bounds`; counts[k, r] gets the pairs of row r from chunk
    k, and start_*[k] a copy of the sequence state at the start of chunk k, so that the chunks
    can be emitted in parallel. Leaves the sequence state as it is after the last event; pop
    gets the events' weights. Returns the number of pairs.
    """
    n_pairs = 0
    for k in range(bounds.shape[0] - 1):
        for s in range(hist_n.shape[0]):
            for j in range(hist_items.shape[1]):
                start_items[k, s, j] = hist_items[s, j]
                start_w[k, s, j] = hist_w[s, j]
            start_n[k, s] = hist_n[s]
            start_time[k, s] = last_time[s]
        n_pairs += _walk(bounds[k], bounds[k + 1], seqs, items, weights, times, hist_items,
                         hist_w, hist_n, last_time, uses_gap, backward, 0, gap, half_life, anchor,
                         False, counts[k], items[:0], weights[:0], pop)
    return n_pairs


@njit(nogil=True, cache=True)
def plan_buckets(indptr, counts, region, touched):
    """Lay out the bucket buffer, row after row: row r's region starts at region[r] and holds its
    old columns, then its pairs from chunk 0, chunk 1, ... Turns counts[k, r] into the position
    of the first pair of chunk k in row r. A row never outgrows its region when merged.
    Sets touched[r] for each row that gets pairs."""
    n_rows = region.shape[0] - 1
    pos = 0
    for r in range(n_rows):
        region[r] = pos
        pos += indptr[r + 1] - indptr[r]
        old_end = pos
        for k in range(counts.shape[0]):
            n = counts[k, r]
            counts[k, r] = pos
            pos += n
        if pos > old_end:
            touched[r] = True
    region[n_rows] = pos


@njit(nogil=True, cache=True, parallel=True)
def emit_pairs(seqs, items, weights, times, bounds, start_items, start_w, start_n, start_time,
               uses_gap, backward, dist_mode, gap, half_life, anchor, fill, cols, vals):
    """The emitting walk: write every pair into its row's bucket (see plan_buckets), so that a
    bucket gets its pairs in log order. The chunks of events run in parallel, each from its own
    copy of the sequence state at its start (count_pairs)."""
    for k in prange(bounds.shape[0] - 1):
        _walk(bounds[k], bounds[k + 1], seqs, items, weights, times, start_items[k], start_w[k],
              start_n[k], start_time[k], uses_gap, backward, dist_mode, gap, half_life, anchor,
              True, fill[k], cols, vals, weights[:0])


@njit(nogil=True, cache=True, inline="always")
def _add_pairs(where, cols, vals, p_lo, p_hi, out_cols, out_vals, at, m):
    """Add the pairs cols/vals[p_lo:p_hi] in log order to the row of m cells at
    out_cols/out_vals[at:], whose column positions `where` holds (-1: not in the row): a pair
    adds to its cell, or starts a new one after the others. Returns the row's new length."""
    for q in range(p_lo, p_hi):
        if q + AHEAD < p_hi:
            _prefetch(where, cols[q + AHEAD])
        c = cols[q]
        p = where[c]
        if p < 0:
            where[c] = m
            out_cols[at + m] = c
            out_vals[at + m] = vals[q]
            m += 1
        else:
            out_vals[at + p] += vals[q]
    return m


@njit(nogil=True, cache=True, parallel=True)
def merge_buckets(indptr, indices, data, region, cols, vals, row_bounds, where, lengths):
    """Merge the bucket of each row that got pairs with its old columns, inside the buffer.

    A cell starts from its old value and adds its pairs in log order; a row keeps its columns in
    order of first appearance (old ones first). So the result does not depend on how a log was
    cut into batches. Row ranges row_bounds[t]..row_bounds[t+1] run in parallel, each with its
    own `where` (column -> position in the row, -1 when absent), and lay their rows out one
    after another from the start of the range's region; a row without pairs only keeps its
    place (place_rows copies it). lengths[r] gets each row's new length.
    """
    for t in prange(row_bounds.shape[0] - 1):
        position = where[t]
        out = region[row_bounds[t]]
        for r in range(row_bounds[t], row_bounds[t + 1]):
            lo = indptr[r]
            m = indptr[r + 1] - lo
            pairs, end = region[r] + m, region[r + 1]
            if pairs < end:
                for q in range(m):  # out + m <= pairs: the old columns never overwrite a pair
                    c = indices[lo + q]
                    cols[out + q] = c
                    vals[out + q] = data[lo + q]
                    position[c] = q
                # writes stay at or behind the pair read: in place is safe
                m = _add_pairs(position, cols, vals, pairs, end, cols, vals, out, m)
                for q in range(out, out + m):
                    position[cols[q]] = -1
            lengths[r] = m
            out += m


@njit(nogil=True, cache=True)
def place_rows(indptr, indices, data, region, row_bounds, new_indptr, cols, vals):
    """Finish the new CSR (`new_indptr`) inside the buffer: copy each run of rows without pairs
    straight from the old arrays as one block, and move each range's merged rows down to their
    place. Every write lands at or before what is still to be read."""
    for t in range(row_bounds.shape[0] - 1):
        shift = region[row_bounds[t]] - new_indptr[row_bounds[t]]
        r = row_bounds[t]
        while r < row_bounds[t + 1]:
            first = r  # a run of rows without pairs (their region is just their old columns)
            while r < row_bounds[t + 1] and region[r + 1] - region[r] == indptr[r + 1] - indptr[r]:
                r += 1
            offset = new_indptr[first] - indptr[first]
            for q in range(indptr[first], indptr[r]):
                cols[q + offset] = indices[q]
                vals[q + offset] = data[q]
            if r < row_bounds[t + 1]:  # then a merged row, laid out `shift` further up
                if shift > 0:
                    for q in range(new_indptr[r], new_indptr[r + 1]):
                        cols[q] = cols[q + shift]
                        vals[q] = vals[q + shift]
                r += 1


def add_events(indptr, indices, data, n_items, seqs, items, weights, times, hist_items, hist_w,
               hist_n, last_time, uses_gap, backward, dist_mode, gap, half_life, anchor, pop,
               touched, n_threads):
    """The batch way: count a batch of events into a compact exact-count CSR (indptr with
    n_items + 1 entries); returns the new (indptr, indices, data) and the number of pairs
    added. The arrays given are not changed, except the sequence state
    (hist_*, last_time: moved past the batch), `pop` (gets the events' weights) and `touched`
    (bool, n_items: set for each row that gets pairs).

    Two walks over the events: count_pairs sizes each row's bucket, emit_pairs fills the buckets
    (in `n_threads` chunks of events); then merge_buckets merges rows in place (in `n_threads`
    ranges of rows), place_rows lays the new CSR out in the buffer, and the buffer, shrunk in
    place, becomes the new CSR.
    """
    n = items.shape[0]
    n_seq, window = hist_items.shape
    # Chunks of events are emitted in parallel, each from its own copy of the sequence state:
    # only when the batch has more events than there are sequences is that copy the cheaper part.
    n_chunks = max(1, min(n_threads, n // max(1, n_seq)))
    bounds = np.arange(n_chunks + 1, dtype=np.int64) * n // n_chunks
    start_items = np.empty((n_chunks, n_seq, window), dtype=np.int32)
    start_w = np.empty((n_chunks, n_seq, window), dtype=np.float64)
    start_n = np.empty((n_chunks, n_seq), dtype=np.int64)
    start_time = np.empty((n_chunks, n_seq), dtype=np.float64)
    counts = np.zeros((n_chunks, n_items), dtype=np.int64)
    n_pairs = count_pairs(seqs, items, weights, times, bounds, hist_items, hist_w, hist_n,
                          last_time, uses_gap, backward, gap, half_life, anchor, start_items,
                          start_w, start_n, start_time, counts, pop)

    region = np.empty(n_items + 1, dtype=np.int64)
    plan_buckets(indptr, counts, region, touched)
    cols = np.empty(region[n_items], dtype=np.int32)
    vals = np.empty(region[n_items], dtype=np.float64)
    emit_pairs(seqs, items, weights, times, bounds, start_items, start_w, start_n, start_time,
               uses_gap, backward, dist_mode, gap, half_life, anchor, counts, cols, vals)
    del start_items, start_w, start_n, start_time, counts

    # row ranges of about equal work (old columns + pairs)
    n_ranges = max(1, min(n_threads, n_items))
    row_bounds = np.searchsorted(region, np.arange(n_ranges + 1) * region[n_items] // n_ranges)
    row_bounds[0], row_bounds[-1] = 0, n_items
    where = np.full((n_ranges, n_items), -1, dtype=np.int32)
    new_indptr = np.zeros(n_items + 1, dtype=np.int64)
    merge_buckets(indptr, indices, data, region, cols, vals, row_bounds, where, new_indptr[1:])
    np.cumsum(new_indptr, out=new_indptr)
    place_rows(indptr, indices, data, region, row_bounds, new_indptr, cols, vals)
    # Shrink in place (realloc), not into a copy: the buffer's head already is the new CSR.
    cols.resize(new_indptr[n_items], refcheck=False)
    vals.resize(new_indptr[n_items], refcheck=False)
    return new_indptr, cols, vals, n_pairs


@njit(nogil=True, cache=True)
def bucket_pairs(seqs, items, weights, times, hist_items, hist_w, hist_n, last_time, uses_gap,
                 backward, dist_mode, gap, half_life, anchor, pop, per_row, touched):
    """Walk a small batch twice (count, then emit), touching only the state of its own
    sequences and rows; returns (rows, bounds, cols, vals, n_pairs): the rows that get pairs
    (ascending, each set in `touched`), row rows[k]'s pairs in log order in
    cols/vals[bounds[k]:bounds[k + 1]], and the number of pairs. As count_pairs, moves the
    sequence state past the batch and adds the events' weights to `pop`. `per_row` (int64,
    n_items) must be zeros, and is left so.
    """
    n, window = seqs.shape[0], hist_items.shape[1]
    saved_items = np.empty((n, window), dtype=np.int32)  # the state of each event's sequence
    saved_w = np.empty((n, window), dtype=np.float64)
    saved_n = np.empty(n, dtype=np.int64)
    saved_time = np.empty(n, dtype=np.float64)
    for e in range(n):
        s = seqs[e]
        saved_items[e], saved_w[e] = hist_items[s], hist_w[s]
        saved_n[e], saved_time[e] = hist_n[s], last_time[s]
    n_pairs = _walk(0, n, seqs, items, weights, times, hist_items, hist_w, hist_n, last_time,
                    uses_gap, backward, 0, gap, half_life, anchor, False, per_row, items[:0],
                    weights[:0], pop)
    # a pair's row is an event's item or an item its sequence held before the batch
    rows = np.unique(np.concatenate((items, saved_items.ravel())))
    rows = rows[rows >= 0]
    rows = rows[per_row[rows] > 0]
    bounds = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    for k in range(rows.shape[0]):  # per_row: row count -> where its bucket starts
        r = rows[k]
        bounds[k + 1] = bounds[k] + per_row[r]
        per_row[r] = bounds[k]
        touched[r] = True
    for e in range(n):
        s = seqs[e]
        hist_items[s], hist_w[s] = saved_items[e], saved_w[e]
        hist_n[s], last_time[s] = saved_n[e], saved_time[e]
    cols = np.empty(bounds[-1], dtype=np.int32)
    vals = np.empty(bounds[-1], dtype=np.float64)
    _walk(0, n, seqs, items, weights, times, hist_items, hist_w, hist_n, last_time, uses_gap,
          backward, dist_mode, gap, half_life, anchor, True, per_row, cols, vals, weights[:0])
    per_row[rows] = 0
    return rows, bounds, cols, vals, n_pairs


@njit(nogil=True, cache=True, inline="always")
def _hash(c, bits):
    """Where column c's probe starts in a table of 2**bits slots (bits <= 32): Fibonacci
    hashing, the top bits of c times 2**32 / golden ratio, spreads runs and strides of ids."""
    return (np.int64(c) * 2654435769 & 0xFFFFFFFF) >> (32 - bits)


@njit(nogil=True, cache=True)
def build_tables(starts, ends, indices, rows, table_at, table_bits, slots):
    """Fill the hash table of each row r in `rows`, slots[table_at[r]:] (2**table_bits[r] slots,
    linear probing), with the offset of each of its cells from starts[r]; -1 marks an empty
    slot. A row's columns are distinct, so each cell takes a slot of its own."""
    for r in rows:
        at, bits = table_at[r], np.int64(table_bits[r])
        mask = (1 << bits) - 1
        slots[at:at + mask + 1] = -1
        lo, hi = starts[r], ends[r]
        for q in range(lo, hi):
            i = _hash(indices[q], bits)
            while slots[at + i] >= 0:
                i = (i + 1) & mask
            slots[at + i] = q - lo


@njit(nogil=True, cache=True)
def pack_tables(rows, table_at, table_bits, slots, out):
    """Copy the tables of `rows` (see build_tables) one after another to the start of `out`,
    pointing table_at there; returns the slots they fill."""
    fill = 0
    for r in rows:
        size = 1 << np.int64(table_bits[r])
        out[fill:fill + size] = slots[table_at[r]:table_at[r] + size]
        table_at[r] = fill
        fill += size
    return fill


@njit(nogil=True, cache=True, inline="always")
def _add_hashed(slots, at, bits, cols, vals, p_lo, p_hi, out_cols, out_vals, lo, m):
    """As _add_pairs, for the row of m cells at out_cols/out_vals[lo:] whose hash table is
    slots[at:at + 2**bits] (see build_tables; room for every pair is the caller's): a pair
    costs a probe or two, however long the row. Returns the row's new length."""
    mask = (1 << bits) - 1
    for q in range(p_lo, p_hi):
        if q + AHEAD < p_hi:
            _prefetch(slots, at + _hash(cols[q + AHEAD], bits))
        c = cols[q]
        i = _hash(c, bits)
        while True:
            p = slots[at + i]
            if p < 0:
                slots[at + i] = m
                out_cols[lo + m] = c
                out_vals[lo + m] = vals[q]
                m += 1
                break
            if out_cols[lo + p] == c:
                out_vals[lo + p] += vals[q]
                break
            i = (i + 1) & mask
    return m


@njit(nogil=True, cache=True, inline="always")
def _mark_row(where, indices, lo, m, cols, p_lo, p_hi):
    """Mark in `where` the position of each of the row's m cells at indices[lo:], and each new
    column of the pairs cols[p_lo:p_hi] with -2; returns the row's length after the merge."""
    for q in range(m):
        where[indices[lo + q]] = q
    grown = m
    for q in range(p_lo, p_hi):
        if where[cols[q]] == -1:
            where[cols[q]] = -2
            grown += 1
    return grown


@njit(nogil=True, cache=True)
def merge_in_place(starts, ends, limits, indices, data, fill, rows, bounds, cols, vals, where,
                   table_at, table_bits, slots, first):
    """Merge each row rows[k], k from `first` on, with its pairs (cols/vals[bounds[k]:
    bounds[k + 1]]) inside the store.

    As in merge_buckets, a cell adds its pairs in log order and new columns follow the old ones
    in order of first appearance, the first pair setting the value. A row with a hash table
    (table_bits[r] > 0, room for all its pairs: see build_tables) finds its columns there;
    any other is marked in `where` (int32, n_items; must be all -1, and is left so) cell by
    cell. A row that would outgrow its room (a hashed row: were each pair a new column, which
    spares counting them) first moves to the free tail at `fill`, with room for twice its new
    length (so a growing row moves rarely); its old slot becomes garbage. A table holds
    offsets within the row, so it moves along. Returns (k, fill, cells added): k is len(rows)
    when done, else the row that must move but does not fit in the tail (compact the store,
    then call again from k).
    """
    added = 0
    for k in range(first, rows.shape[0]):
        r, p_lo, p_hi = rows[k], bounds[k], bounds[k + 1]
        lo = starts[r]
        m = ends[r] - lo
        hashed = table_bits[r] > 0
        grown = m + p_hi - p_lo if hashed else _mark_row(where, indices, lo, m, cols, p_lo, p_hi)
        if lo + grown > limits[r]:
            if fill + 2 * grown > indices.shape[0]:
                if not hashed:
                    for q in range(p_lo, p_hi):
                        where[cols[q]] = -1
                    for q in range(lo, lo + m):
                        where[indices[q]] = -1
                return k, fill, added
            indices[fill:fill + m] = indices[lo:lo + m]
            data[fill:fill + m] = data[lo:lo + m]
            lo = fill
            starts[r], limits[r] = lo, lo + 2 * grown
            fill += 2 * grown
        if hashed:
            n = _add_hashed(slots, table_at[r], np.int64(table_bits[r]), cols, vals, p_lo, p_hi,
                            indices, data, lo, m)
        else:
            n = _add_pairs(where, cols, vals, p_lo, p_hi, indices, data, lo, m)
            for q in range(lo, lo + n):
                where[indices[q]] = -1
        ends[r] = lo + n
        added += n - m
    return rows.shape[0], fill, added


@njit(nogil=True, cache=True, parallel=True)
def pack_rows(starts, ends, indices, data, at, out_indices, out_data):
    """Copy each row r of the store to out_*, from at[r] on."""
    for r in prange(starts.shape[0]):
        lo, hi = at[r], at[r] + ends[r] - starts[r]
        out_indices[lo:hi] = indices[starts[r]:ends[r]]
        out_data[lo:hi] = data[starts[r]:ends[r]]


@njit(nogil=True, cache=True)
def row_col_sums(starts, ends, indices, data, n_cols):
    """Row totals, column totals and the grand total of the rows [starts[r]:ends[r]]."""
    n_rows = starts.shape[0]
    row_sum = np.zeros(n_rows, dtype=np.float64)
    col_sum = np.zeros(n_cols, dtype=np.float64)
    for r in range(n_rows):
        for q in range(starts[r], ends[r]):
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
def _prune_row(starts, ends, indices, data, r, col_sum, total, rank, method, heap_s, heap_i,
               cutoffs, top_n):
    """Row r's len(heap_s) best neighbours by similarity into (heap_s, heap_i), best first.

    cutoffs[r] (-inf when unknown): a count below which no cell of the row can be among its
    `top_n` best, left by the row's last prune. Counts only grow (a decay rebase forgets the
    cutoffs), so it still holds, and the scan skips such cells from its start."""
    lo, hi = starts[r], ends[r]
    row_sum = 0.0
    if method != SIM_RAW:
        for q in range(lo, hi):
            row_sum += data[q]
    needs_col = method != SIM_RAW and method != SIM_CONDITIONAL
    # With a score that grows with the count alone, a count below `floor` scores below the
    # full heap's worst even after rounding to float32 (2**-20 is 16 float32 steps): such a
    # cell, most of a long row, is skipped before its score is computed.
    per_count = 1.0 if method == SIM_RAW else 1.0 / row_sum if method == SIM_CONDITIONAL else 0.0
    floor = cutoffs[r] * (1.0 - 2.0 ** -20) if per_count > 0.0 else -np.inf
    k = heap_s.shape[0]
    size = 0
    for q in range(lo, hi):
        # a cell that may enter costs a random read of its rank (ties with the worst kept go
        # by rank): ask for it ahead, but only for such cells, not for all of a long row
        if q + AHEAD < hi and data[q + AHEAD] >= floor:
            _prefetch_read(rank, indices[q + AHEAD])
        if data[q] < floor:
            continue
        # a column total is a random access into a catalog-sized array: only when used
        s = col_sum[indices[q]] if needs_col else 0.0
        score = np.float32(similarity(method, data[q], row_sum, s, total))
        if size == k and not _worse(heap_s[0], heap_i[0], score, indices[q], rank):
            continue  # cannot enter a full heap: skip the call
        size = heap_push(heap_s, heap_i, size, score, indices[q], rank)
        if size == k and per_count > 0.0:
            floor = heap_s[0] / per_count * (1.0 - 2.0 ** -20)
    if k == top_n and per_count > 0.0:
        # below the count of the k-th best (by float32 rounding and the margin), and there
        # are k cells at or above it, now and ever after
        cutoffs[r] = floor
    heap_sort_best_first(heap_s, heap_i, size, rank)


@njit(nogil=True, cache=True, parallel=True)
def prune_rows(starts, ends, indices, data, rows, col_sum, total, rank, method, top_n, cutoffs):
    """Serving CSR of the given rows of the store (row r is [starts[r]:ends[r]]), in that
    order: each one's `top_n` best neighbours by similarity, best first, float32. Row totals
    are summed here; column totals and the grand total (`col_sum`, `total`) are read only by
    the column-dependent similarities.

    Rows are independent, so they run in parallel (numba's thread count; a serving process
    sets it to 1 for its builder). `cutoffs` (float64, per row of the store): see _prune_row;
    the prune keeps them up to date."""
    n_rows = rows.shape[0]
    out_indptr = np.zeros(n_rows + 1, dtype=np.int64)
    for k in range(n_rows):
        r = rows[k]
        out_indptr[k + 1] = out_indptr[k] + min(ends[r] - starts[r], top_n)
    out_indices = np.empty(out_indptr[n_rows], dtype=np.int32)
    out_scores = np.empty(out_indptr[n_rows], dtype=np.float32)
    for k in prange(n_rows):
        lo, hi = out_indptr[k], out_indptr[k + 1]
        if lo < hi:
            _prune_row(starts, ends, indices, data, rows[k], col_sum, total, rank, method,
                       out_scores[lo:hi], out_indices[lo:hi], cutoffs, top_n)
    return out_indptr, out_indices, out_scores


@njit(nogil=True, cache=True)
def splice_rows(old_starts, old_ends, old_indices, old_scores, rows, new_indptr, new_indices,
                new_scores, out_indptr, out_indices, out_scores):
    """Fill the compact `out_*` CSR: rows in `rows` (ascending) from the `new_*` CSR (its k-th
    row is rows[k]), every other row from the old rows (row r at old_starts[r]:old_ends[r]).
    The output may have more rows than the old ones; each row past them must be in `rows`.
    `out_indices` / `out_scores` may be longer than the rows need (room for later appends)."""
    out = 0
    k = 0
    out_indptr[0] = 0
    for r in range(out_indptr.shape[0] - 1):
        if k < rows.shape[0] and rows[k] == r:
            lo, hi = new_indptr[k], new_indptr[k + 1]
            out_indices[out:out + hi - lo] = new_indices[lo:hi]
            out_scores[out:out + hi - lo] = new_scores[lo:hi]
            k += 1
        else:
            lo, hi = old_starts[r], old_ends[r]
            out_indices[out:out + hi - lo] = old_indices[lo:hi]
            out_scores[out:out + hi - lo] = old_scores[lo:hi]
        out += hi - lo
        out_indptr[r + 1] = out


@njit(nogil=True, cache=True)
def append_rows(old_starts, old_ends, rows, new_indptr, new_indices, new_scores, pool_indices,
                pool_scores, fill, starts, ends):
    """Row bounds of a snapshot that keeps the old rows in place and has `rows` (its k-th row
    is the k-th of the `new_*` CSR) written into the pool from position `fill`, which the
    caller guarantees no live snapshot uses. starts/ends may have more rows than the old ones;
    each row past them must be in `rows`."""
    n_old = old_starts.shape[0]
    starts[:n_old] = old_starts
    ends[:n_old] = old_ends
    m = new_indptr[rows.shape[0]]
    pool_indices[fill:fill + m] = new_indices[:m]
    pool_scores[fill:fill + m] = new_scores[:m]
    for k in range(rows.shape[0]):
        starts[rows[k]] = fill + new_indptr[k]
        ends[rows[k]] = fill + new_indptr[k + 1]


@njit(nogil=True, cache=True, inline="always")
def _more_popular(a, b, popularity):
    """True if item a comes before item b in a fill order (ties go to the lower id)."""
    return popularity[a] > popularity[b] or (popularity[a] == popularity[b] and a < b)


@njit(nogil=True, cache=True)
def merge_fill_order(old_order, moved, changed, popularity, fill_order, rank):
    """Fill `fill_order` (ids most popular first, ties to the lower id: a stable argsort of
    -popularity) and `rank` (each id's position in it) in one pass, by merging two lists already
    in that order: `old_order` without the ids marked in `moved`, and `changed` (the moved ids
    and ids new since old_order, by their current popularity)."""
    n_old, n_changed = old_order.shape[0], changed.shape[0]
    i = j = 0
    for pos in range(fill_order.shape[0]):
        while i < n_old and moved[old_order[i]]:
            i += 1
        if j < n_changed and (i == n_old or _more_popular(changed[j], old_order[i], popularity)):
            item = changed[j]
            j += 1
        else:
            item = old_order[i]
            i += 1
        fill_order[pos] = item
        rank[item] = pos
