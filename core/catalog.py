"""The item catalog and its business rules: availability, categories, tags, content neighbours.

The request engine filters with it (hidden items, category restrictions) and answers cold-start
items from it (items sharing categories or tags). One writer, many readers: a write builds a new
immutable `_State` under a lock and publishes it with one reference assignment; a reader reads
the reference once and uses that state to the end, never locking.

Presets build catalogs from the bundled data: `catalog_from_online_retail`,
`catalog_from_diginetica` and the generic `read_catalog_csv`.
"""

from __future__ import annotations

import heapq
import logging
import math
import re
import threading
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from covisit.core.datasets import BadRow, _csv_rows, _open
from covisit.core.interning import IdMap
from covisit.core.snapshot import Snapshot

log = logging.getLogger(__name__)

MAX_CANDIDATES_PER_FEATURE = 5000
_DIRECT_RANK = 256  # a group of equally-shared items up to this size is ranked by look-ups
CATALOG_COLUMNS = ("item_id", "categories", "available", "tags")
DIGINETICA_CATEGORIES = "product-categories.csv"
# Words that say nothing about what a product is; words under 3 letters are dropped anyway.
STOP_WORDS = frozenset({"and", "the", "with", "set", "for", "from", "in", "of", "to"})
_WORD = re.compile(r"[a-z]+")
_TRUE, _FALSE = frozenset({"true", "1", ""}), frozenset({"false", "0"})

Popularity = Mapping[str, float] | Callable[[str], float]


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    categories: tuple[str, ...] = ()
    available: bool = True
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.item_id, str) or not self.item_id:
            raise ValueError(f"item_id must be a non-empty string, got {self.item_id!r}")
        if not isinstance(self.available, bool):
            raise ValueError(f"item {self.item_id!r}: available must be a bool, got {self.available!r}")
        for name in ("categories", "tags"):
            names = getattr(self, name)
            if isinstance(names, str):  # tuple("abc") would silently make three names
                raise ValueError(f"item {self.item_id!r}: {name} must be a sequence of strings, not a string")
            names = tuple(names)
            if not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"item {self.item_id!r}: {name} must be non-empty strings, got {names!r}")
            object.__setattr__(self, name, names)


# A feature is ("c", category) or ("t", tag): a category and a tag of the same name are different.
Feature = tuple[str, str]


def _features(item: CatalogItem) -> set[Feature]:
    return {("c", c) for c in item.categories} | {("t", t) for t in item.tags}


class _State(NamedTuple):
    """One published catalog; never changed after publication."""
    version: int
    items: dict[str, CatalogItem]  # every catalog item, available or not
    deleted: frozenset[str]  # tombstones: deleted ids stay hidden
    hidden: frozenset[str]  # deleted or unavailable
    postings: dict[Feature, tuple[str, ...]]  # feature -> available items having it


_EMPTY_STATE = _State(0, {}, frozenset(), frozenset(), {})


class _Head(NamedTuple):
    """A posting list's most popular items: (-popularity, id) pairs in ranking order, and their ids."""
    keys: tuple[tuple[float, str], ...]
    members: frozenset[str]


class _Ranked:
    """Popularity-ordered posting-list heads of one (state, popularity object) pair, filled lazily."""

    __slots__ = ("heads", "popularity", "state")

    def __init__(self, state: _State, popularity: object):
        self.state, self.popularity = state, popularity  # strong reference: identity stays valid
        self.heads: dict[Feature, _Head] = {}


def _scan(heads: list[_Head], accept: Callable[[str], bool], need: int) -> list[tuple[float, str]]:
    """The `need` best (-popularity, id) keys of accepted items across popularity-sorted heads."""
    firsts: dict[str, tuple[float, str]] = {}
    for head in heads:
        taken = 0
        for key in head.keys:
            if accept(key[1]):
                firsts[key[1]] = key
                taken += 1
                if taken == need:
                    break
    return heapq.nsmallest(need, firsts.values())


def _lookup(popularity: Popularity) -> Callable[[str], float]:
    """A function id -> popularity; ids a Mapping lacks count as 0."""
    if isinstance(popularity, Mapping):
        get = popularity.get
        return lambda item_id: get(item_id, 0.0)
    if callable(popularity):
        return popularity
    raise TypeError(f"popularity must be a Mapping or a callable, got {type(popularity).__name__}")


class Catalog:
    """Items with categories, tags and availability; one writer and many lock-free readers.

    Deleting an id removes the item and leaves a tombstone: the id stays hidden (even if the
    model still knows it) until an upsert brings it back. An id the catalog has never seen is
    not hidden: the catalog may describe only part of what the model serves.
    """

    def __init__(self, items: Iterable[CatalogItem] = (), *,
                 max_candidates_per_feature: int = MAX_CANDIDATES_PER_FEATURE):
        if max_candidates_per_feature < 1:
            raise ValueError(f"max_candidates_per_feature must be >= 1, got {max_candidates_per_feature}")
        self.max_candidates_per_feature = max_candidates_per_feature
        self._lock = threading.Lock()  # serializes writers only
        self._state = _EMPTY_STATE
        self._ranked = _Ranked(_EMPTY_STATE, None)
        self._dense: tuple = (None, None, -1, np.empty(0, np.int32))  # hidden_dense memo
        self.upsert(items)

    # ---- writes ---------------------------------------------------------------------------
    def upsert(self, items: Iterable[CatalogItem]) -> int:
        """Add or replace items (the last of repeated ids wins); returns how many distinct ids
        were written. An upserted id loses its deletion tombstone."""
        batch: dict[str, CatalogItem] = {}
        for item in items:
            if not isinstance(item, CatalogItem):
                raise TypeError(f"expected CatalogItem, got {type(item).__name__}")
            batch[item.item_id] = item
        if not batch:
            return 0
        with self._lock:
            old = self._state
            new_items = dict(old.items)
            new_items.update(batch)
            self._publish(old, new_items, old.deleted - batch.keys(), batch.keys())
        return len(batch)

    def delete(self, item_ids: Iterable[str]) -> int:
        """Remove items and hide their ids from now on; returns how many were in the catalog.

        Ids the catalog does not hold are hidden too (the model may still recommend them)."""
        ids = set(item_ids)
        if not ids:
            return 0
        with self._lock:
            old = self._state
            existed = ids & old.items.keys()
            new_items = {i: item for i, item in old.items.items() if i not in existed} if existed else old.items
            self._publish(old, new_items, old.deleted | ids, ids)
        return len(existed)

    def _publish(self, old: _State, items: dict[str, CatalogItem], deleted: frozenset[str],
                 touched: Collection[str]) -> None:
        """Build the state that differs from `old` in the `touched` ids, then publish it."""
        removed: dict[Feature, set[str]] = defaultdict(set)
        added: dict[Feature, list[str]] = defaultdict(list)
        for item_id in touched:
            before = old.items.get(item_id)
            if before is not None and item_id not in old.hidden:
                for feature in _features(before):
                    removed[feature].add(item_id)
            after = items.get(item_id)
            if after is not None and after.available and item_id not in deleted:
                for feature in _features(after):
                    added[feature].append(item_id)
        postings = dict(old.postings)
        for feature in removed.keys() | added.keys():
            gone = removed.get(feature, ())
            kept = [i for i in postings.get(feature, ()) if i not in gone]
            kept.extend(added.get(feature, ()))
            if kept:
                postings[feature] = tuple(kept)
            else:
                postings.pop(feature, None)
        now_hidden = {i for i in touched if i in deleted or not items[i].available}
        hidden = frozenset((old.hidden - touched) | now_hidden)
        self._state = _State(old.version + 1, items, deleted, hidden, postings)

    # ---- reads ----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Grows by one at every write: (version, request) is a safe cache key."""
        return self._state.version

    def __len__(self) -> int:
        return len(self._state.items)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._state.items

    def get(self, item_id: str) -> CatalogItem | None:
        return self._state.items.get(item_id)

    def __iter__(self) -> Iterator[CatalogItem]:
        """The items of the state current when iteration starts."""
        return iter(list(self._state.items.values()))

    def is_hidden(self, item_id: str) -> bool:
        """Deleted, or in the catalog with available=False."""
        return item_id in self._state.hidden

    def hidden_ids(self) -> frozenset[str]:
        return self._state.hidden

    def hidden_dense(self, items: IdMap) -> np.ndarray:
        """Sorted int32 ids in `items` (a snapshot's IdMap) of the hidden items that it knows,
        for kernel `exclude` arrays; remembered until the catalog or the IdMap changes."""
        state = self._state
        memo = self._dense
        if memo[0] is state and memo[1] is items and memo[2] == len(items):
            return memo[3]
        get = items.get
        dense = np.array(sorted(i for i in map(get, state.hidden) if i >= 0), dtype=np.int32)
        dense.flags.writeable = False
        self._dense = (state, items, len(items), dense)
        return dense

    def items_in_categories(self, categories: Iterable[str]) -> frozenset[str]:
        """Available items in any of `categories`."""
        postings = self._state.postings
        lists = [postings.get(("c", c), ()) for c in set(categories)]
        return frozenset().union(*lists)

    def content_neighbours(self, item_id: str, popularity: Popularity, k: int,
                           exclude: Collection[str] = frozenset()) -> list[tuple[str, float]]:
        """Up to k available items sharing a category or tag with `item_id`, best first.

        Ranked by the number of shared categories + tags (the score), then popularity (higher
        first; ids a Mapping lacks count as 0), then id. `item_id` itself and `exclude` never
        appear; an id the catalog lacks has no neighbours.

        Bound: a category or tag contributes at most `max_candidates_per_feature` items, its
        most popular (shared counts are exact for those; an item beyond a cap may be
        under-counted). Each category/tag is ranked by popularity once per (catalog state,
        popularity object) and remembered, so pass the same object across calls, e.g.
        `popularity_view(snapshot)`, and never change its values in place. With a remembered
        ranking a call costs set intersections of the F heads plus about k * F steps; with a new
        popularity object it first ranks them (F * cap look-ups at most).
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        state = self._state
        item = state.items.get(item_id)
        if item is None or k == 0:
            return []
        if not isinstance(exclude, (set, frozenset)):
            exclude = set(exclude)
        ranked = self._ranked
        if ranked.state is not state or ranked.popularity is not popularity:
            ranked = self._ranked = _Ranked(state, popularity)  # a racing reader just redoes it
        pop = _lookup(popularity)
        heads = [head for feature in _features(item)
                 if (head := self._head(ranked, feature, pop)) is not None]
        # Items in two or more heads (usually few): an item in c heads is in c(c-1)/2 of the
        # pairwise intersections, which C code counts.
        pairs: Counter[str] = Counter()
        for a in range(len(heads)):
            for b in range(a + 1, len(heads)):
                pairs.update(heads[a].members & heads[b].members)
        pairs.pop(item_id, None)
        if len(exclude) < len(pairs):
            for excluded in exclude:
                pairs.pop(excluded, None)
        else:
            pairs = Counter({i: n for i, n in pairs.items() if i not in exclude})
        levels: dict[int, list[str]] = defaultdict(list)
        for candidate, n in pairs.items():
            levels[n].append(candidate)
        out: list[tuple[str, float]] = []
        for n in sorted(levels, reverse=True):
            shared = float((1 + math.isqrt(1 + 8 * n)) // 2)
            group = levels[n]
            need = k - len(out)
            if len(group) <= _DIRECT_RANK:
                best = heapq.nsmallest(need, [(-float(pop(i)), i) for i in group])
            else:
                members = frozenset(group)
                best = _scan(heads, members.__contains__, need)
            out.extend((i, shared) for _, i in best)
            if len(out) >= k:
                return out
        # The rest share one feature: the best of them lead some head.
        best = _scan(heads, lambda i: i != item_id and i not in pairs and i not in exclude, k - len(out))
        out.extend((i, 1.0) for _, i in best)
        return out

    def _head(self, ranked: _Ranked, feature: Feature, pop: Callable[[str], float]) -> _Head | None:
        head = ranked.heads.get(feature)
        if head is None:
            posting = ranked.state.postings.get(feature)
            if posting is None:
                return None
            keys = [(-float(pop(i)), i) for i in posting]
            if len(keys) > self.max_candidates_per_feature:
                keys = heapq.nsmallest(self.max_candidates_per_feature, keys)
                members = frozenset(i for _, i in keys)
            else:
                keys.sort()
                members = frozenset(posting)
            head = ranked.heads[feature] = _Head(tuple(keys), members)
        return head


# ---- popularity of a snapshot --------------------------------------------------------------


class SnapshotPopularity(Mapping[str, float]):
    """A snapshot's popularity by item id (a Mapping; ids the model lacks are missing)."""

    __slots__ = ("_get", "_items", "_popularity")

    def __init__(self, snapshot: Snapshot):
        self._items, self._popularity = snapshot.items, snapshot.popularity
        self._get = snapshot.items.get

    def __getitem__(self, item_id: str) -> float:
        i = self._get(item_id)
        if i < 0:
            raise KeyError(item_id)
        return float(self._popularity[i])

    def get(self, item_id: str, default: float = 0.0) -> float:  # type: ignore[override]
        i = self._get(item_id)
        return float(self._popularity[i]) if i >= 0 else default

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items.names())

    def __len__(self) -> int:
        return len(self._items)


_views: weakref.WeakKeyDictionary[Snapshot, SnapshotPopularity] = weakref.WeakKeyDictionary()
_views_lock = threading.Lock()


def popularity_view(snapshot: Snapshot) -> SnapshotPopularity:
    """The one SnapshotPopularity of `snapshot`: the same object on every call, so
    Catalog.content_neighbours ranks long categories once per snapshot, not per request."""
    with _views_lock:
        view = _views.get(snapshot)
        if view is None:
            view = _views[snapshot] = SnapshotPopularity(snapshot)
        return view


# ---- presets --------------------------------------------------------------------------------


def description_tags(description: str) -> tuple[str, ...]:
    """Lower-cased words of letters only, 3+ long, not stop words; first occurrence order."""
    words = (w for w in _WORD.findall(description.lower()) if len(w) >= 3 and w not in STOP_WORDS)
    return tuple(dict.fromkeys(words))


def catalog_from_online_retail(path: str | Path) -> list[CatalogItem]:
    """One item per StockCode of the UCI Online Retail CSV(.gz), in order of first appearance,
    tagged by the words of its most frequent Description (`description_tags`). No categories
    (the data has none); all available. Blank descriptions never vote, a tie goes to the
    description seen first, and a code with only blank ones has no tags. Rows of the wrong
    width or without a StockCode are left out (logged)."""
    path = Path(path)
    votes: dict[str, Counter[str]] = {}  # every StockCode, in order of first appearance
    bad = 0
    with _open(path) as f:
        columns, width, rows = _csv_rows(f, path, ("StockCode", "Description"))
        stock, desc = columns["StockCode"], columns["Description"]
        for _, row in rows:
            if len(row) != width or not row[stock]:
                bad += 1
                continue
            counter = votes.setdefault(row[stock], Counter())
            description = row[desc].strip()
            if description:
                counter[description] += 1
    if bad:
        log.warning("%s: %d malformed row(s) left out of the catalog", path, bad)
    # Counter.most_common keeps first-seen order among equal counts.
    return [CatalogItem(code, tags=description_tags(counter.most_common(1)[0][0]) if counter else ())
            for code, counter in votes.items()]


def catalog_from_diginetica(directory: str | Path) -> list[CatalogItem]:
    """Items of DIGINETICA's product-categories.csv (`itemId;categoryId`), in the directory or
    the file itself; an item listed under several categories gets them all. Strict: a bad row
    raises BadRow naming its line."""
    path = Path(directory)
    if path.is_dir():
        path = path / DIGINETICA_CATEGORIES
    categories: dict[str, dict[str, None]] = {}
    with _open(path) as f:
        columns, width, rows = _csv_rows(f, path, ("itemId", "categoryId"), delimiter=";")
        item_col, category_col = columns["itemId"], columns["categoryId"]
        for line, row in rows:
            if len(row) != width:
                raise BadRow(path, line, f"expected {width} columns, got {len(row)}")
            item_id, category = row[item_col].strip(), row[category_col].strip()
            if not item_id:
                raise BadRow(path, line, "column itemId: empty")
            if not category:
                raise BadRow(path, line, "column categoryId: empty")
            categories.setdefault(item_id, {})[category] = None
    return [CatalogItem(i, categories=tuple(cats)) for i, cats in categories.items()]


def _names(text: str, column: str) -> tuple[str, ...]:
    if not text.strip():
        return ()
    names = tuple(n.strip() for n in text.split("|"))
    if not all(names):
        raise ValueError(f"column {column}: empty name in {text!r}")
    return tuple(dict.fromkeys(names))


def read_catalog_csv(path: str | Path) -> list[CatalogItem]:
    """Read a catalog CSV(.gz) with header `item_id,categories,available,tags` (any order; only
    item_id is required). Categories and tags are `|`-separated; available is true/false/1/0
    (any case; empty means true). A catalog is configuration, so reading is strict: an unknown
    column raises ValueError, and a bad or repeated row raises BadRow naming line and column."""
    path = Path(path)
    with _open(path) as f:
        columns, width, rows = _csv_rows(f, path, ("item_id",))
        unknown = [c for c in columns if c not in CATALOG_COLUMNS]
        if unknown:
            raise ValueError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; "
                             f"expected {', '.join(CATALOG_COLUMNS)}")
        if len(columns) != width:
            raise ValueError(f"{path}: a column is named twice in the header")
        first_line: dict[str, int] = {}
        items = []
        for line, row in rows:
            try:
                if len(row) != width:
                    raise ValueError(f"expected {width} columns, got {len(row)}")
                fields = {c: row[i] for c, i in columns.items()}
                item_id = fields["item_id"].strip()
                if not item_id:
                    raise ValueError("column item_id: empty")
                if item_id in first_line:
                    raise ValueError(f"column item_id: {item_id!r} repeats line {first_line[item_id]}")
                available = fields.get("available", "").strip().lower()
                if available not in _TRUE | _FALSE:
                    raise ValueError(f"column available: expected true/false/1/0, got {fields['available']!r}")
                items.append(CatalogItem(item_id, categories=_names(fields.get("categories", ""), "categories"),
                                         available=available in _TRUE, tags=_names(fields.get("tags", ""), "tags")))
            except ValueError as exc:
                raise BadRow(path, line, str(exc)) from None
            first_line[item_id] = line
    return items
