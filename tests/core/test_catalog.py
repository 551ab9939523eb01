"""Tests for the item catalog: writes, hiding, category filters, content neighbours (by hand, against
a brute-force twin, and under a concurrent writer), and the catalog readers."""

import csv
import gzip
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covisit.core.catalog import (
    Catalog,
    CatalogItem,
    SnapshotPopularity,
    catalog_from_diginetica,
    catalog_from_online_retail,
    description_tags,
    popularity_view,
    read_catalog_csv,
)
from covisit.core.config import ModelConfig
from covisit.core.datasets import BadRow
from covisit.core.interning import IdMap
from covisit.core.snapshot import Snapshot
from tests.core.files import write

ONLINE_RETAIL = Path(__file__).resolve().parents[2] / "loadtest" / "data" / "online_retail.csv.gz"




def reference_neighbours(items, item_id, popularity, k, exclude):
    """Brute force over every item: the ranking content_neighbours must give (no cap in play)."""
    by_id = {i.item_id: i for i in items}
    if item_id not in by_id:
        return []
    mine = by_id[item_id]
    rows = []
    for other in by_id.values():
        if other.item_id == item_id or other.item_id in exclude or not other.available:
            continue
        shared = len(set(mine.categories) & set(other.categories)) + len(set(mine.tags) & set(other.tags))
        if shared:
            rows.append((-shared, -popularity.get(other.item_id, 0.0), other.item_id))
    return [(i, float(-s)) for s, _, i in sorted(rows)[:k]]


# --- CatalogItem ---------------------------------------------------------------------------------


def test_item_defaults_and_list_coercion():
    item = CatalogItem("a", categories=["c1", "c2"], tags=["t"])
    assert item == CatalogItem("a", ("c1", "c2"), True, ("t",))
    assert CatalogItem("b") == CatalogItem("b", (), True, ())
    hash(item)  # frozen and made of tuples: usable in sets


@pytest.mark.parametrize("kwargs, message", [
    ({"item_id": ""}, "item_id"),
    ({"item_id": 7}, "item_id"),
    ({"item_id": "a", "categories": "shoes"}, "categories"),
    ({"item_id": "a", "tags": ("ok", "")}, "tags"),
    ({"item_id": "a", "tags": ("ok", 3)}, "tags"),
    ({"item_id": "a", "available": "yes"}, "available"),
])
def test_item_rejects_bad_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CatalogItem(**kwargs)


# --- writes and reads ----------------------------------------------------------------------------


def test_upsert_get_len_contains():
    catalog = Catalog()
    assert len(catalog) == 0 and catalog.get("a") is None
    a, b = CatalogItem("a", ("c",)), CatalogItem("b", tags=("t",))
    assert catalog.upsert([a, b]) == 2
    assert len(catalog) == 2 and "a" in catalog and "z" not in catalog
    assert catalog.get("a") == a and catalog.get("b") == b
    assert sorted(i.item_id for i in catalog) == ["a", "b"]


def test_upsert_replaces_and_last_of_a_batch_wins():
    catalog = Catalog([CatalogItem("a", ("old",))])
    assert catalog.upsert([CatalogItem("a", ("x",)), CatalogItem("a", ("new",))]) == 1
    assert len(catalog) == 1
    assert catalog.get("a") == CatalogItem("a", ("new",))


def test_upsert_rejects_non_items_and_changes_nothing():
    catalog = Catalog([CatalogItem("a")])
    version = catalog.version
    with pytest.raises(TypeError, match="CatalogItem"):
        catalog.upsert([CatalogItem("b"), {"item_id": "c"}])
    assert len(catalog) == 1 and catalog.version == version


def test_empty_writes_publish_nothing():
    catalog = Catalog([CatalogItem("a")])
    version = catalog.version
    assert catalog.upsert([]) == 0
    assert catalog.delete([]) == 0
    assert catalog.version == version


def test_every_write_bumps_the_version():
    catalog = Catalog()
    v0 = catalog.version
    catalog.upsert([CatalogItem("a")])
    catalog.delete(["a"])
    catalog.upsert([CatalogItem("a")])
    assert catalog.version == v0 + 3


def test_delete_counts_existing_and_hides_all_given_ids():
    catalog = Catalog([CatalogItem("a"), CatalogItem("b"), CatalogItem("c")])
    assert catalog.delete(["a", "b", "only-in-model", "a"]) == 2
    assert len(catalog) == 1
    assert catalog.get("a") is None and catalog.get("c") is not None
    assert catalog.is_hidden("a") and catalog.is_hidden("b")
    assert catalog.is_hidden("only-in-model")  # the model may still know it: keep it out
    assert not catalog.is_hidden("c")
    assert catalog.hidden_ids() == {"a", "b", "only-in-model"}
    assert catalog.delete(["a"]) == 0  # already gone
    assert catalog.is_hidden("a")


def test_upsert_after_delete_brings_the_item_back():
    catalog = Catalog([CatalogItem("a", ("c",))])
    catalog.delete(["a"])
    assert catalog.items_in_categories(["c"]) == frozenset()
    catalog.upsert([CatalogItem("a", ("c",))])
    assert not catalog.is_hidden("a") and "a" not in catalog.hidden_ids()
    assert catalog.items_in_categories(["c"]) == {"a"}


def test_unavailable_items_are_hidden_until_available_again():
    catalog = Catalog([CatalogItem("a", available=False), CatalogItem("b")])
    assert catalog.is_hidden("a") and not catalog.is_hidden("b")
    assert not catalog.is_hidden("never-seen")  # the catalog may describe only part of the model
    assert catalog.hidden_ids() == {"a"}
    assert len(catalog) == 2 and catalog.get("a").available is False
    catalog.upsert([CatalogItem("a")])
    assert catalog.hidden_ids() == frozenset()
    catalog.upsert([CatalogItem("b", available=False)])
    assert catalog.hidden_ids() == {"b"}


def test_items_in_categories():
    catalog = Catalog([
        CatalogItem("a", ("shoes",)),
        CatalogItem("b", ("shoes", "sale")),
        CatalogItem("c", ("sale",)),
        CatalogItem("d", ("shoes",), available=False),
        CatalogItem("e", tags=("shoes",)),  # a tag, not a category
        CatalogItem("f", ("hats",)),
    ])
    assert catalog.items_in_categories(["shoes"]) == {"a", "b"}
    assert catalog.items_in_categories(["shoes", "sale"]) == {"a", "b", "c"}
    assert catalog.items_in_categories(iter(["hats", "nope"])) == {"f"}
    assert catalog.items_in_categories([]) == frozenset()
    catalog.delete(["a"])
    assert catalog.items_in_categories(["shoes"]) == {"b"}


def test_recategorized_item_leaves_its_old_category():
    catalog = Catalog([CatalogItem("a", ("old",), tags=("t",)), CatalogItem("b", ("old",), tags=("t",))])
    catalog.upsert([CatalogItem("a", ("new",))])
    assert catalog.items_in_categories(["old"]) == {"b"}
    assert catalog.items_in_categories(["new"]) == {"a"}
    assert catalog.content_neighbours("b", {}, 10, set()) == []  # a no longer has tag t


def test_hidden_dense_maps_hidden_ids_the_model_knows():
    items = IdMap(["a", "b", "c", "d"])
    catalog = Catalog([CatalogItem("d", available=False), CatalogItem("a")])
    catalog.delete(["b", "not-in-model"])
    dense = catalog.hidden_dense(items)
    assert dense.dtype == np.int32 and dense.tolist() == [1, 3]
    assert catalog.hidden_dense(items) is dense  # remembered while nothing changes
    catalog.delete(["a"])
    assert catalog.hidden_dense(items).tolist() == [0, 1, 3]
    items.intern("not-in-model")  # the model learns the id: it is hidden from then on
    assert catalog.hidden_dense(items).tolist() == [0, 1, 3, 4]


# --- content neighbours --------------------------------------------------------------------------

# Worked by hand for item "q" (categories c1, c2; tags red, wool):
#   a: c1, c2, red   -> 3 shared     b: c1, wool -> 2     c: c2, red -> 2 (more popular than b)
#   d: c1 -> 1 (pop 5)   e: red -> 1 (pop 5, id after d)   f: wool -> 1 (pop 9)
#   g: c1, c2, red, wool but unavailable;   h: category "red" only (not the tag) -> 0
#   x: nothing shared
TINY = [
    CatalogItem("q", ("c1", "c2"), tags=("red", "wool")),
    CatalogItem("a", ("c1", "c2"), tags=("red",)),
    CatalogItem("b", ("c1",), tags=("wool",)),
    CatalogItem("c", ("c2",), tags=("red",)),
    CatalogItem("d", ("c1",)),
    CatalogItem("e", tags=("red",)),
    CatalogItem("f", tags=("wool",)),
    CatalogItem("g", ("c1", "c2"), available=False, tags=("red", "wool")),
    CatalogItem("h", ("red",)),
    CatalogItem("x", ("c9",), tags=("blue",)),
]
TINY_POP = {"q": 100.0, "a": 1.0, "b": 2.0, "c": 3.0, "d": 5.0, "e": 5.0, "f": 9.0, "g": 50.0, "h": 70.0}


def test_content_neighbours_ranked_by_shared_then_popularity_then_id():
    catalog = Catalog(TINY)
    assert catalog.content_neighbours("q", TINY_POP, 10, set()) == [
        ("a", 3.0), ("c", 2.0), ("b", 2.0), ("f", 1.0), ("d", 1.0), ("e", 1.0)]


def test_content_neighbours_k_cuts_the_ranking():
    catalog = Catalog(TINY)
    assert catalog.content_neighbours("q", TINY_POP, 2, set()) == [("a", 3.0), ("c", 2.0)]
    assert catalog.content_neighbours("q", TINY_POP, 5, set()) == [
        ("a", 3.0), ("c", 2.0), ("b", 2.0), ("f", 1.0), ("d", 1.0)]
    assert catalog.content_neighbours("q", TINY_POP, 0, set()) == []
    with pytest.raises(ValueError, match="k"):
        catalog.content_neighbours("q", TINY_POP, -1, set())


def test_content_neighbours_excludes():
    catalog = Catalog(TINY)
    assert catalog.content_neighbours("q", TINY_POP, 10, {"a", "f", "unknown"}) == [
        ("c", 2.0), ("b", 2.0), ("d", 1.0), ("e", 1.0)]
    # any collection works, and a huge exclude set takes the other filtering path
    many = {f"z{i}" for i in range(1000)} | {"c"}
    assert catalog.content_neighbours("q", TINY_POP, 3, many) == [("a", 3.0), ("b", 2.0), ("f", 1.0)]
    assert catalog.content_neighbours("q", TINY_POP, 3, ["a"]) == [("c", 2.0), ("b", 2.0), ("f", 1.0)]


def test_content_neighbours_follow_availability_and_deletes():
    catalog = Catalog(TINY)
    catalog.upsert([CatalogItem("g", ("c1", "c2"), tags=("red", "wool"))])  # now available: 4 shared
    assert catalog.content_neighbours("q", TINY_POP, 2, set()) == [("g", 4.0), ("a", 3.0)]
    catalog.delete(["g", "a"])
    assert catalog.content_neighbours("q", TINY_POP, 2, set()) == [("c", 2.0), ("b", 2.0)]
    catalog.upsert([CatalogItem("c", ("c2",), available=False, tags=("red",))])
    assert catalog.content_neighbours("q", TINY_POP, 2, set()) == [("b", 2.0), ("f", 1.0)]


def test_content_neighbours_of_unknown_deleted_or_featureless_items():
    catalog = Catalog([*TINY, CatalogItem("bare")])
    assert catalog.content_neighbours("unknown", TINY_POP, 5, set()) == []
    assert catalog.content_neighbours("bare", TINY_POP, 5, set()) == []
    assert catalog.content_neighbours("x", TINY_POP, 5, set()) == []  # shares nothing
    catalog.delete(["q"])
    assert catalog.content_neighbours("q", TINY_POP, 5, set()) == []


def test_unavailable_item_still_has_neighbours():
    catalog = Catalog(TINY)
    assert catalog.content_neighbours("g", TINY_POP, 1, set()) == [("q", 4.0)]


def test_popularity_as_callable_and_missing_ids():
    catalog = Catalog(TINY)
    by_mapping = catalog.content_neighbours("q", TINY_POP, 10, set())
    assert catalog.content_neighbours("q", lambda i: TINY_POP.get(i, 0.0), 10, set()) == by_mapping
    # ids a Mapping lacks count as 0: with no popularity at all, ties go by id
    assert catalog.content_neighbours("q", {}, 10, set()) == [
        ("a", 3.0), ("b", 2.0), ("c", 2.0), ("d", 1.0), ("e", 1.0), ("f", 1.0)]
    with pytest.raises(TypeError, match="popularity"):
        catalog.content_neighbours("q", 3.0, 10, set())


def test_new_popularity_object_is_not_served_a_stale_ranking():
    catalog = Catalog([CatalogItem("q", tags=("t",)), CatalogItem("a", tags=("t",)), CatalogItem("b", tags=("t",))])
    assert catalog.content_neighbours("q", {"a": 1.0, "b": 2.0}, 1, set()) == [("b", 1.0)]
    assert catalog.content_neighbours("q", {"a": 2.0, "b": 1.0}, 1, set()) == [("a", 1.0)]
    popularity = {"a": 1.0, "b": 2.0}
    assert catalog.content_neighbours("q", popularity, 1, set()) == [("b", 1.0)]
    catalog.upsert([CatalogItem("c", tags=("t",))])  # a new state: the ranking is redone
    popularity["c"] = 3.0  # (only legal because the state changed)
    assert catalog.content_neighbours("q", popularity, 1, set()) == [("c", 1.0)]


def test_candidate_cap_keeps_the_most_popular_of_a_long_list():
    items = [CatalogItem("q", ("big",), tags=("t",)),
             *(CatalogItem(f"i{n}", ("big",)) for n in range(6)),
             CatalogItem("r", ("big",), tags=("t",))]
    popularity = {f"i{n}": float(n) for n in range(6)} | {"r": -1.0}
    capped = Catalog(items, max_candidates_per_feature=3)
    # "big" (8 items) is cut to its 3 most popular, q itself among them; r still shares the tag.
    pop_q = popularity | {"q": 100.0}
    assert capped.content_neighbours("q", pop_q, 10, set()) == [("i5", 1.0), ("i4", 1.0), ("r", 1.0)]
    # the same catalog uncapped: r shares both and leads
    full = Catalog(items)
    assert full.content_neighbours("q", pop_q, 3, set()) == [("r", 2.0), ("i5", 1.0), ("i4", 1.0)]
    with pytest.raises(ValueError, match="max_candidates_per_feature"):
        Catalog(max_candidates_per_feature=0)


def test_large_equally_shared_groups_rank_like_the_reference():
    # 600 items share two tags with q: a group past the direct-ranking size, ranked by head scans.
    items = [CatalogItem("q", ("c",), tags=("t1", "t2"))]
    items += [CatalogItem(f"m{n:03d}", tags=("t1", "t2")) for n in range(600)]
    items += [CatalogItem(f"s{n:03d}", ("c",)) for n in range(300)]
    popularity = {f"m{n:03d}": float((n * 37) % 101) for n in range(600)}
    popularity |= {f"s{n:03d}": 1000.0 for n in range(300)}
    catalog = Catalog(items)
    exclude = {f"m{n:03d}" for n in range(0, 600, 7)}
    for k in (1, 10, 700):
        assert catalog.content_neighbours("q", popularity, k, exclude) == \
            reference_neighbours(items, "q", popularity, k, exclude)


ids = st.sampled_from([f"i{n}" for n in range(12)])
names = st.lists(st.sampled_from(["x", "y", "z", "w"]), max_size=3, unique=True).map(tuple)
catalog_items = st.builds(CatalogItem, ids, names, st.booleans(), names)


@settings(max_examples=200, deadline=None)
@given(st.lists(catalog_items, max_size=14),
       st.dictionaries(ids, st.sampled_from([0.0, 1.0, 2.0, 3.5]), max_size=12),
       ids, st.integers(0, 14), st.sets(ids, max_size=4))
def test_content_neighbours_match_brute_force(items, popularity, item_id, k, exclude):
    final = list({i.item_id: i for i in items}.values())
    catalog = Catalog(items)
    assert catalog.content_neighbours(item_id, popularity, k, exclude) == \
        reference_neighbours(final, item_id, popularity, k, exclude)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.lists(catalog_items, max_size=4).map(lambda b: ("upsert", b)),
                          st.lists(ids, max_size=3).map(lambda b: ("delete", b))), max_size=10),
       ids)
def test_incremental_writes_equal_a_fresh_build(operations, item_id):
    """Any sequence of upserts and deletes leaves the same catalog as building its end result at once."""
    incremental = Catalog()
    live: dict[str, CatalogItem] = {}
    deleted: set[str] = set()
    for op, batch in operations:
        if op == "upsert":
            incremental.upsert(batch)
            live.update((i.item_id, i) for i in batch)
            deleted -= {i.item_id for i in batch}
        else:
            incremental.delete(batch)
            for i in batch:
                live.pop(i, None)
            deleted |= set(batch)
    fresh = Catalog(live.values())
    fresh.delete(deleted)
    assert incremental.hidden_ids() == fresh.hidden_ids()
    assert {i.item_id: i for i in incremental} == live
    for category in ("x", "y", "z", "w"):
        assert incremental.items_in_categories([category]) == fresh.items_in_categories([category])
    assert incremental.content_neighbours(item_id, {}, 20, set()) == \
        reference_neighbours(list(live.values()), item_id, {}, 20, set())


def test_a_read_keeps_the_state_it_started_with():
    """A write published in the middle of a read (here: from the popularity look-up, which runs
    between the two features' heads) does not leak into that read's answer."""
    catalog = Catalog([CatalogItem("q", ("c",), tags=("t",)), CatalogItem("a", ("c",), tags=("t",))])
    writes = []

    def popularity(item_id: str) -> float:
        if not writes:
            writes.append(item_id)
            catalog.upsert([CatalogItem("b", ("c",), tags=("t",)), CatalogItem("a", ("c",), available=False)])
        return 0.0

    assert catalog.content_neighbours("q", popularity, 5, set()) == [("a", 2.0)]
    assert writes  # the write did happen mid-read
    assert catalog.content_neighbours("q", popularity, 5, set()) == [("b", 2.0)]


def test_reader_sees_only_published_states_while_a_writer_upserts():
    """Write i adds n{i} (most popular yet) and makes n{i-2} unavailable, in one batch: every
    published state answers exactly [n{i}, n{i-1}], each sharing both of q's features, and
    states only move forward. A torn write or an answer mixing two states fails."""
    steps = 1500
    popularity = {f"n{i:04d}": float(i) for i in range(steps)}
    catalog = Catalog([CatalogItem("q", ("c",), tags=("t",))])
    expected = {(): -1}
    for i in range(steps):
        expected[tuple(f"n{j:04d}" for j in (i, i - 1) if j >= 0)] = i
    errors: list[BaseException] = []
    seen: list[list[int]] = [[], []]  # per reader: the state each answer came from
    done = threading.Event()

    def read(seen: list[int]):
        try:
            while not done.is_set():
                answer = catalog.content_neighbours("q", popularity, 5, set())
                assert all(score == 2.0 for _, score in answer), answer
                key = tuple(i for i, _ in answer)
                assert key in expected, f"answer from no published state: {key}"
                seen.append(expected[key])
                # n{i-2} went unavailable in the write that showed n{i}: any later read hides it
                if expected[key] >= 2:
                    assert catalog.is_hidden(f"n{expected[key] - 2:04d}"), key
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads finely
    try:
        readers = [threading.Thread(target=read, args=(s,)) for s in seen]
        for r in readers:
            r.start()
        for i in range(steps):
            batch = [CatalogItem(f"n{i:04d}", ("c",), tags=("t",))]
            if i >= 2:
                batch.append(CatalogItem(f"n{i - 2:04d}", ("c",), available=False, tags=("t",)))
            catalog.upsert(batch)
        done.set()
        for r in readers:
            r.join(timeout=60)
    finally:
        sys.setswitchinterval(switch)
    assert not errors, errors[0]
    for states in seen:
        assert len(states) > 10
        assert states == sorted(states), "a reader saw an older state after a newer one"
    assert catalog.content_neighbours("q", popularity, 5, set()) == [("n1499", 2.0), ("n1498", 2.0)]


# --- snapshot popularity -------------------------------------------------------------------------


def tiny_snapshot() -> Snapshot:
    n = 3
    return Snapshot.from_csr(version=1, parent=None, config=ModelConfig(), items=IdMap(["a", "b", "c"]),
                             indptr=np.zeros(n + 1, np.int64), indices=np.empty(0, np.int32),
                             scores=np.empty(0, np.float32), popularity=np.array([3.0, 1.0, 2.0], np.float32),
                             fill_order=np.array([0, 2, 1], np.int32), rank=np.array([0, 2, 1], np.int32))


def test_snapshot_popularity_is_a_mapping_by_item_id():
    view = SnapshotPopularity(tiny_snapshot())
    assert dict(view) == {"a": 3.0, "b": 1.0, "c": 2.0}
    assert len(view) == 3 and "b" in view and "z" not in view
    assert view.get("z", 0.0) == 0.0 and view.get("c") == 2.0
    with pytest.raises(KeyError):
        view["z"]


def test_popularity_view_is_one_object_per_snapshot():
    snap, other = tiny_snapshot(), tiny_snapshot()
    assert popularity_view(snap) is popularity_view(snap)
    assert popularity_view(other) is not popularity_view(snap)
    catalog = Catalog([CatalogItem("q", tags=("t",)), CatalogItem("b", tags=("t",)),
                       CatalogItem("c", tags=("t",)), CatalogItem("new", tags=("t",))])
    assert catalog.content_neighbours("q", popularity_view(snap), 3, set()) == [
        ("c", 1.0), ("b", 1.0), ("new", 1.0)]


# --- Online Retail -------------------------------------------------------------------------------


def test_description_tags():
    assert description_tags("WHITE HANGING HEART T-LIGHT HOLDER") == (
        "white", "hanging", "heart", "light", "holder")
    assert description_tags("SET OF 3 CAKE TINS AND A BOX, WITH THE LID") == ("cake", "tins", "box", "lid")
    assert description_tags("BAG 500g SWIRLY MARBLES 45x45cm") == ("bag", "swirly", "marbles")
    assert description_tags("red RED Red") == ("red",)
    assert description_tags("?") == ()


def test_online_retail_hand_made(tmp_path):
    text = (
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "1,A1,PINK HEART MUG,1,2010-12-01 08:26:00,2.5,17850,United Kingdom\n"
        "2,B2,damaged,-3,2010-12-01 08:27:00,0,,United Kingdom\n"
        "3,A1,damages,-1,2010-12-01 08:28:00,0,,United Kingdom\n"
        "4,B2,GREEN TEA SET,2,2010-12-01 08:29:00,1.0,17850,United Kingdom\n"
        "5,A1,PINK HEART MUG,1,2010-12-01 08:30:00,2.5,17851,United Kingdom\n"
        "6,C3,,1,2010-12-01 08:31:00,0,,United Kingdom\n"
        "7,A1,\"ROSE, MUG\",1,2010-12-01 08:32:00,2.5,17851,United Kingdom\n"
        "8,D4,  ,1,2010-12-01 08:33:00,0,,United Kingdom\n"
        "9,D4,WOODEN STAR,1,2010-12-01 08:34:00,1.0,17851,United Kingdom\n"
        "10,E5,short row\n"
    )
    for name in ("retail.csv", "retail.csv.gz"):
        items = catalog_from_online_retail(write(tmp_path / name, text))
        assert items == [
            CatalogItem("A1", tags=("pink", "heart", "mug")),  # 2 votes beat 1 + 1
            CatalogItem("B2", tags=("damaged",)),  # 1:1 tie: the description seen first
            CatalogItem("C3"),  # only a blank description
            CatalogItem("D4", tags=("wooden", "star")),  # blanks do not vote
        ]


def test_online_retail_bundled_file():
    items = catalog_from_online_retail(ONLINE_RETAIL)
    by_id = {i.item_id: i for i in items}
    assert len(by_id) == len(items)
    with gzip.open(ONLINE_RETAIL, "rt", encoding="utf-8", newline="") as f:
        codes = {row["StockCode"] for row in csv.DictReader(f)}
    assert set(by_id) == codes
    # 2302 rows say WHITE HANGING HEART T-LIGHT HOLDER (9 say CREAM ..., 1 "?", 1 a stock note)
    assert by_id["85123A"] == CatalogItem("85123A", tags=("white", "hanging", "heart", "light", "holder"))
    assert by_id["22423"].tags == ("regency", "cakestand", "tier")  # "REGENCY CAKESTAND 3 TIER"
    assert by_id["POST"].tags == ("postage",)
    assert all(not i.categories and i.available for i in items)
    catalog = Catalog(items)
    # 21733 is RED HANGING HEART T-LIGHT HOLDER: it shares hanging, heart, light and holder
    assert ("85123A", 4.0) in catalog.content_neighbours("21733", {}, 50, set())


# --- DIGINETICA ----------------------------------------------------------------------------------


def test_diginetica_categories(tmp_path):
    write(tmp_path / "product-categories.csv", "itemId;categoryId\n1;10\n2;10\n3;20\n1;30\n\n1;10\n")
    expected = [CatalogItem("1", ("10", "30")), CatalogItem("2", ("10",)), CatalogItem("3", ("20",))]
    assert catalog_from_diginetica(tmp_path) == expected
    assert catalog_from_diginetica(tmp_path / "product-categories.csv") == expected
    assert Catalog(expected).items_in_categories(["10"]) == {"1", "2"}


@pytest.mark.parametrize("text, line, message", [
    ("itemId;categoryId\n1;10\n2;10;5\n", 3, "columns"),
    ("itemId;categoryId\n1;10\n2;\n", 3, "categoryId"),
    ("itemId;categoryId\n;10\n", 2, "itemId"),
])
def test_diginetica_bad_row_names_its_line(tmp_path, text, line, message):
    path = write(tmp_path / "product-categories.csv", text)
    with pytest.raises(BadRow, match=message) as info:
        catalog_from_diginetica(tmp_path)
    assert info.value.line == line and str(info.value).startswith(f"{path}:{line}:")


def test_diginetica_wrong_header(tmp_path):
    write(tmp_path / "product-categories.csv", "item;category\n1;10\n")
    with pytest.raises(ValueError, match="itemId"):
        catalog_from_diginetica(tmp_path)


# --- generic catalog CSV -------------------------------------------------------------------------


def test_read_catalog_csv(tmp_path):
    text = (
        "item_id,categories,available,tags\n"
        "a,shoes|sale,true,red|leather\n"
        "b,shoes,FALSE,\n"
        "c,,,\n"
        "d, hats | caps ,0, wool \n"
        "e,x|x,1,\"t,1\"\n"
    )
    expected = [
        CatalogItem("a", ("shoes", "sale"), True, ("red", "leather")),
        CatalogItem("b", ("shoes",), False),
        CatalogItem("c"),
        CatalogItem("d", ("hats", "caps"), False, ("wool",)),
        CatalogItem("e", ("x",), True, ("t,1",)),
    ]
    assert read_catalog_csv(write(tmp_path / "catalog.csv", text)) == expected
    assert read_catalog_csv(write(tmp_path / "catalog.csv.gz", text)) == expected


def test_read_catalog_csv_optional_columns_any_order(tmp_path):
    path = write(tmp_path / "catalog.csv", "tags,item_id\nred,a\n,b\n")
    assert read_catalog_csv(path) == [CatalogItem("a", tags=("red",)), CatalogItem("b")]
    assert read_catalog_csv(write(tmp_path / "empty.csv", "item_id,categories,available,tags\n")) == []


@pytest.mark.parametrize("row, column", [
    ("b,shoes,yes,red", "available"),
    (",shoes,true,red", "item_id"),
    ("b,shoes||sale,true,red", "column categories: empty name"),
    ("b,shoes,true,red|", "column tags: empty name"),
    ("a,shoes,true,red", "item_id"),  # repeats line 2
    ("b,shoes,true", "columns"),
])
def test_read_catalog_csv_bad_row_names_line_and_column(tmp_path, row, column):
    path = write(tmp_path / "catalog.csv", f"item_id,categories,available,tags\na,,,\n{row}\nc,,,\n")
    with pytest.raises(BadRow, match=column) as info:
        read_catalog_csv(path)
    assert info.value.line == 3 and str(info.value).startswith(f"{path}:3:")


@pytest.mark.parametrize("header, message", [
    ("item_id,category,available", "unknown column.*'category'"),
    ("categories,available,tags", "item_id"),
    ("item_id,tags,tags", "twice"),
    ("", "empty file"),
])
def test_read_catalog_csv_bad_header(tmp_path, header, message):
    path = write(tmp_path / "catalog.csv", header + "\n" if header else "")
    with pytest.raises(ValueError, match=message):
        read_catalog_csv(path)
