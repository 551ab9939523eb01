"""What the served lists expose: how much of the catalog they show, how evenly, and from which
sources, over the newest responses.

An exposure is one item in one response (one slot). The measures are module functions as well,
so the offline report (report.py) computes them exactly as the live window does:

- Gini coefficient of the exposure counts x_1..x_n over the n catalog items (items never shown
  count as 0): G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)). 0 when every item is shown
  equally often, (n - 1) / n when one item takes every slot, 0 when nothing was shown.
- Shannon entropy in bits of the exposure distribution over the items shown: -sum p log2 p with
  p = x_i / slots; log2(k) when k items are shown equally often.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

# Indexed by the SOURCE_* ints of covisit.core.kernels_topk (0..3); the names are the proto's.
SOURCE_NAMES: tuple[str, ...] = ("COOCCURRENCE", "CONTENT", "POPULARITY", "EXPLORATION")


def source_name(source: int) -> str:
    """The name of a source int (a ValueError for anything else: a caller's bug, not data)."""
    if not 0 <= source < len(SOURCE_NAMES):
        raise ValueError(f"unknown recommendation source {source!r}")
    return SOURCE_NAMES[source]


def histogram(counts: Iterable[int]) -> dict[int, int]:
    """Count -> how many items have it (zeros left out): all the measures below need."""
    return dict(Counter(c for c in counts if c))


def gini(counts: Collection[int], n: int) -> float:
    """Gini coefficient of the exposure counts of the items shown, padded with zeros to `n` items.
    `n` below len(counts) is taken as len(counts): there cannot be fewer items than were shown."""
    return gini_of(histogram(counts), max(n, len(counts)))


def gini_of(hist: Mapping[int, int], n: int) -> float:
    """gini() from a histogram (count -> items), in O(distinct counts): with x ascending and i
    1-based, G = 2 sum_i i x_i / (n sum x) - (n + 1) / n, where the zeros take the first ranks
    and the h items of count c the next h, whose ranks sum to h r + h (h + 1) / 2 after r."""
    if not hist:
        return 0.0
    values = np.array(sorted(hist), dtype=np.float64)
    items = np.array([hist[v] for v in sorted(hist)], dtype=np.float64)
    n = max(n, int(items.sum()))
    before = n - items.sum() + np.concatenate(([0.0], np.cumsum(items)[:-1]))  # ranks taken below
    rank_sum = items * before + items * (items + 1) / 2
    total = float(values @ items)
    return max(0.0, 2.0 * float(values @ rank_sum) / (n * total) - (n + 1) / n)  # equal: ~ -1e-17


def entropy_bits(counts: Collection[int]) -> float:
    """Shannon entropy in bits of the distribution proportional to `counts` (zeros ignored)."""
    return entropy_of(histogram(counts))


def entropy_of(hist: Mapping[int, int]) -> float:
    """entropy_bits() from a histogram (count -> items)."""
    if not hist:
        return 0.0
    values = np.array(list(hist), dtype=np.float64)
    items = np.array(list(hist.values()), dtype=np.float64)
    p = values / float(values @ items)
    return max(0.0, float(-(items * p * np.log2(p)).sum()))


def source_shares(slots_by_source: Sequence[int]) -> dict[str, float]:
    """Source name -> share of the slots (`slots_by_source[s]` slots came from source s)."""
    total = sum(slots_by_source)
    return {name: (slots_by_source[s] / total if total else 0.0) for s, name in enumerate(SOURCE_NAMES)}


class ExposureStats(NamedTuple):
    responses: int  # responses in the window
    slots: int  # items shown in them (sum of list lengths)
    distinct_items: int
    coverage: float  # distinct_items / max(catalog_size, distinct_items); 0 when both are 0
    gini: float  # over catalog_size items, see the module docstring; 0 when no slots
    entropy_bits: float  # of the exposure distribution over the items shown
    source_shares: dict[str, float]  # source name -> share of slots, all four names present


def exposure_stats(responses: int, hist: Mapping[int, int], slots_by_source: Sequence[int],
                   catalog_size: int) -> ExposureStats:
    """The stats of `responses` responses whose items' exposure counts have histogram `hist`
    (count -> items with that count)."""
    distinct = sum(hist.values())
    n = max(catalog_size, distinct)  # a stale or small catalog size never gives coverage > 1
    return ExposureStats(responses=responses, slots=sum(slots_by_source), distinct_items=distinct,
                         coverage=distinct / n if n else 0.0, gini=gini_of(hist, n),
                         entropy_bits=entropy_of(hist), source_shares=source_shares(slots_by_source))


class ExposureWindow:
    """Exposure over the newest `size` responses.

    Thread-safe: `add` holds one lock for O(len(items)) dict updates (request threads call it on
    every response); `stats` copies the counts under the lock and does the sorting outside it."""

    def __init__(self, size: int = 10_000):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._responses: deque[tuple[tuple[str, ...], tuple[int, ...]]] = deque()
        self._item_counts: dict[str, int] = {}  # only items in the window: memory stays bounded
        self._hist: dict[int, int] = {}  # count -> items with it, kept so that stats cost O(counts)
        self._slots_by_source = [0] * len(SOURCE_NAMES)
        self._lock = threading.Lock()

    def add(self, item_ids: Sequence[str], sources: Sequence[int]) -> None:
        """One response: its items in order and the source int of each."""
        if len(item_ids) != len(sources):
            raise ValueError(f"{len(item_ids)} item ids but {len(sources)} sources")
        sources = tuple(int(s) for s in sources)
        for s in sources:
            source_name(s)  # refuses an unknown source before anything is counted
        response = (tuple(item_ids), sources)
        with self._lock:
            self._count(response, 1)
            self._responses.append(response)
            if len(self._responses) > self.size:
                self._count(self._responses.popleft(), -1)

    def stats(self, catalog_size: int) -> ExposureStats:
        with self._lock:
            responses, hist = len(self._responses), dict(self._hist)
            slots_by_source = list(self._slots_by_source)
        return exposure_stats(responses, hist, slots_by_source, catalog_size)

    def _count(self, response: tuple[tuple[str, ...], tuple[int, ...]], step: int) -> None:
        item_ids, sources = response
        counts, hist = self._item_counts, self._hist
        for item in item_ids:
            old = counts.get(item, 0)
            c = old + step
            if c:
                counts[item] = c
                hist[c] = hist.get(c, 0) + 1
            else:
                del counts[item]
            if old:
                if hist[old] == 1:
                    del hist[old]
                else:
                    hist[old] -= 1
        for s in sources:
            self._slots_by_source[s] += step
