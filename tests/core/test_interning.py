"""Tests for IdMap: dense first-seen ids and the pickle-free array form."""

import numpy as np
import pytest

from covisit.core.interning import IdMap


def test_ids_are_dense_in_first_seen_order():
    m = IdMap()
    assert [m.intern(n) for n in ["b", "a", "c"]] == [0, 1, 2]
    assert m.names() == ["b", "a", "c"]
    assert len(m) == 3
    assert [m.name(i) for i in range(3)] == ["b", "a", "c"]


def test_reintern_returns_same_id():
    m = IdMap()
    assert m.intern("x") == 0
    assert m.intern("y") == 1
    assert m.intern("x") == 0
    assert m.intern("y") == 1
    assert len(m) == 2


def test_constructor_interns_in_order_and_dedups():
    m = IdMap(["a", "b", "a", "c", "b"])
    assert m.names() == ["a", "b", "c"]
    assert m.get("c") == 2


def test_get_unknown_is_minus_one_and_does_not_intern():
    m = IdMap(["a"])
    assert m.get("zz") == -1
    assert m.get("zz", 99) == 99
    assert "zz" not in m
    assert len(m) == 1
    assert m.get("a") == 0
    assert "a" in m


def test_copy_is_independent():
    m = IdMap(["a"])
    c = m.copy()
    c.intern("b")
    assert len(m) == 1 and m.get("b") == -1
    assert c.names() == ["a", "b"]


def test_names_returns_a_copy():
    m = IdMap(["a"])
    m.names().append("b")
    assert m.names() == ["a"]


@pytest.mark.parametrize("names", [
    ["a", "bb", "ccc"],
    ["é", "商品", "🙂x", "", "plain"],
    ["only"],
    [],
])
def test_arrays_round_trip(names):
    m = IdMap(names)
    blob, offsets = m.to_arrays()
    assert blob.dtype == np.uint8 and blob.ndim == 1
    assert offsets.dtype == np.int64 and len(offsets) == len(names) + 1
    assert offsets[0] == 0 and offsets[-1] == len(blob)
    back = IdMap.from_arrays(blob, offsets)
    assert back.names() == names
    assert [back.get(n) for n in names] == list(range(len(names)))


def test_arrays_hold_utf8_bytes():
    blob, offsets = IdMap(["é", "a"]).to_arrays()
    assert bytes(blob) == "éa".encode()
    assert offsets.tolist() == [0, 2, 3]


def test_empty_map_arrays():
    blob, offsets = IdMap().to_arrays()
    assert len(blob) == 0
    assert offsets.tolist() == [0]
    assert len(IdMap.from_arrays(blob, offsets)) == 0


def _arrays(names):
    return IdMap(names).to_arrays()


@pytest.mark.parametrize("offsets", [
    np.array([], dtype=np.int64),  # needs len+1 entries, at least one
    np.array([1, 3], dtype=np.int64),  # does not start at 0
    np.array([0, 2], dtype=np.int64),  # does not end at the blob length (3)
    np.array([0, 4], dtype=np.int64),  # past the blob end
    np.array([[0, 3]], dtype=np.int64),  # not 1-D
    np.array([0, 2, 1, 3], dtype=np.int64),  # decreasing
])
def test_from_arrays_rejects_bad_offsets(offsets):
    blob = np.frombuffer(b"abc", dtype=np.uint8)
    with pytest.raises(ValueError, match="offsets"):
        IdMap.from_arrays(blob, offsets)


def test_from_arrays_rejects_duplicates():
    blob = np.frombuffer(b"abab", dtype=np.uint8)
    offsets = np.array([0, 2, 4], dtype=np.int64)
    with pytest.raises(ValueError, match="duplicate"):
        IdMap.from_arrays(blob, offsets)


def test_from_arrays_rejects_invalid_utf8():
    blob = np.frombuffer(b"\xff\xfe", dtype=np.uint8)
    with pytest.raises(ValueError):
        IdMap.from_arrays(blob, np.array([0, 2], dtype=np.int64))


def test_from_arrays_rejects_split_multibyte_char():
    blob, _ = _arrays(["é"])  # two bytes
    with pytest.raises(ValueError):
        IdMap.from_arrays(blob, np.array([0, 1, 2], dtype=np.int64))


def test_view_is_a_fixed_prefix_while_the_map_grows():
    m = IdMap(["a", "b"])
    v = m.view()
    m.intern("c")
    assert len(v) == 2 and len(m) == 3
    assert (v.get("a"), v.get("b"), v.get("c"), v.get("c", 7), v.get("zz")) == (0, 1, -1, 7, -1)
    assert "b" in v and "c" not in v and "zz" not in v
    assert v.name(1) == "b"
    with pytest.raises(IndexError):
        v.name(2)
    assert v.names() == ["a", "b"]
    blob, offsets = v.to_arrays()
    assert IdMap.from_arrays(blob, offsets).names() == ["a", "b"]
    clone = v.copy()
    clone.intern("d")
    assert clone.names() == ["a", "b", "d"] and clone.get("d") == 2 and m.get("d") == -1
    assert len(IdMap().view()) == 0 and IdMap().view().names() == []


def test_intern_all_gives_the_ids_intern_would_in_one_call():
    one, other = IdMap(["a", "b"]), IdMap(["a", "b"])
    names = ["b", "c", "a", "c", "d"]
    got = one.intern_all(names)
    assert got.dtype == np.int32
    assert got.tolist() == [other.intern(n) for n in names] == [1, 2, 0, 2, 3]
    assert one.names() == other.names()
    assert one.intern_all([]).tolist() == []
