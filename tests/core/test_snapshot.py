"""Tests for saving and loading serving snapshots, and for rejecting broken snapshot directories."""

import json
from pathlib import Path

import numpy as np
import pytest

from covisit.core.config import ModelConfig
from covisit.core.events import Event
from covisit.core.model import CoVisitModel
from covisit.core.scoring import recommend
from covisit.core.snapshot import ARRAYS, FORMAT, FORMAT_VERSION, METADATA_FILE, Snapshot, SnapshotError

EVENTS = [
    Event("u1", "a", "view", 100.0),
    Event("u1", "b", "view", 110.0),
    Event("u1", "c", "click", 120.0),
    Event("u2", "b", "view", 100.0),
    Event("u2", "c", "purchase", 130.0),
    Event("u3", "é", "view", 200.0, session_id="s9"),
    Event("u3", "a", "add_to_cart", 210.0, session_id="s9"),
    Event("u4", "商品", "view", 300.0),
    Event("u4", "a", "view", 301.0),
]
CONTEXTS = [["a"], ["b"], ["c", "a"], ["é"], ["商品"], ["unknown"], [], ["a", "b", "c"]]


def make_snapshot(config: ModelConfig | None = None) -> Snapshot:
    model = CoVisitModel(config)
    model.update(EVENTS)
    return model.snapshot(version=3, parent=2)


@pytest.fixture
def snap() -> Snapshot:
    return make_snapshot()


@pytest.fixture
def saved(snap, tmp_path) -> Path:
    return snap.save(tmp_path / "snap")


def resave(directory: Path, name: str, array) -> None:
    np.save(directory / f"{name}.npy", np.asarray(array), allow_pickle=False)


def read_meta(directory: Path) -> dict:
    return json.loads((directory / METADATA_FILE).read_text())


def write_meta(directory: Path, meta) -> None:
    (directory / METADATA_FILE).write_text(json.dumps(meta))


# --- the built snapshot itself ---------------------------------------------------------------

def test_built_snapshot_is_consistent(snap):
    snap.check()
    assert snap.version == 3 and snap.parent == 2
    assert snap.n_items == 5
    assert snap.watermark == len(EVENTS)
    assert snap.n_links > 0
    for name, (dtype, ndim) in ARRAYS.items():
        if name in ("item_bytes", "item_offsets"):
            continue
        array = snap.csr()[0] if name == "indptr" else getattr(snap, name)
        assert array.dtype == dtype and array.ndim == ndim, name


def test_recommend_on_built_snapshot(snap):
    # u1 and u2 both go b -> c; "a" links to b and c
    got = [r.item_id for r in recommend(snap, ["b"], 1)]
    assert got == ["c"]
    assert "a" not in [r.item_id for r in recommend(snap, ["a"], 5)]  # context excluded


# --- round trip --------------------------------------------------------------------------------

def test_save_writes_every_array_and_metadata(saved):
    names = {p.name for p in saved.iterdir()}
    assert names == {f"{n}.npy" for n in ARRAYS} | {METADATA_FILE}  # no leftover .tmp


def test_save_creates_missing_parents(snap, tmp_path):
    out = snap.save(tmp_path / "a" / "b" / "c")
    assert out == tmp_path / "a" / "b" / "c"
    assert (out / METADATA_FILE).is_file()


def test_save_never_pickles(saved):
    for name, (dtype, _) in ARRAYS.items():
        with open(saved / f"{name}.npy", "rb") as f:
            array = np.load(f, allow_pickle=False)
        assert array.dtype == dtype, name
        assert array.dtype != object


def test_load_mmaps_by_default(snap, saved):
    loaded = Snapshot.load(saved)
    for name in ("starts", "ends", "indices", "scores", "popularity", "fill_order", "rank"):
        array = getattr(loaded, name)
        assert isinstance(array, np.memmap), name
        assert not array.flags.writeable, name
        assert array.dtype == getattr(snap, name).dtype, name
        np.testing.assert_array_equal(array, getattr(snap, name), err_msg=name)


def test_load_without_mmap(snap, saved):
    loaded = Snapshot.load(saved, mmap=False)
    assert not isinstance(loaded.indices, np.memmap)
    np.testing.assert_array_equal(loaded.scores, snap.scores)


def test_load_restores_ids_and_fields(snap, saved):
    loaded = Snapshot.load(saved)
    assert loaded.items.names() == snap.items.names()
    assert loaded.items.get("商品") == snap.items.get("商品") >= 0
    assert loaded.version == 3
    assert loaded.parent == 2
    assert loaded.watermark == len(EVENTS)
    assert loaded.created_at == snap.created_at
    assert loaded.config == snap.config
    assert loaded.meta == snap.meta
    assert loaded.metadata() == snap.metadata()


def test_metadata_file_fields(snap, saved):
    meta = read_meta(saved)
    assert meta["format"] == FORMAT == "covisit-snapshot"
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert meta["model_version"] == 3
    assert meta["parent_version"] == 2
    assert meta["event_watermark"] == len(EVENTS)
    assert meta["counts"] == {"items": 5, "links": snap.n_links, "events": len(EVENTS)}
    assert ModelConfig.from_dict(meta["config"]) == snap.config


def test_no_parent_round_trips_as_none(tmp_path):
    model = CoVisitModel()
    model.update(EVENTS)
    snap = model.snapshot(version=1)
    loaded = Snapshot.load(snap.save(tmp_path))
    assert loaded.parent is None
    assert read_meta(tmp_path)["parent_version"] is None


def test_non_default_config_round_trips(tmp_path):
    cfg = ModelConfig(window=2, backward=0.5, distance="linear", similarity="cosine", top_n=1,
                      recency=0.9, max_context=3, exclude_context=False,
                      event_weights={"view": 1.0, "click": 2.5, "add_to_cart": 3.0,
                                     "purchase": 4.0})
    snap = make_snapshot(cfg)
    loaded = Snapshot.load(snap.save(tmp_path))
    assert loaded.config == cfg
    for ctx in CONTEXTS:
        assert recommend(loaded, ctx, 4) == recommend(snap, ctx, 4)


@pytest.mark.parametrize("mmap", [True, False])
def test_loaded_snapshot_recommends_the_same(snap, saved, mmap):
    loaded = Snapshot.load(saved, mmap=mmap)
    for ctx in CONTEXTS:
        for k in (1, 3, 10):
            assert recommend(loaded, ctx, k) == recommend(snap, ctx, k), (ctx, k)
    assert recommend(loaded, ["b"], 10)  # not trivially empty


def test_snapshot_without_links_round_trips(tmp_path):
    model = CoVisitModel()
    model.update([Event("u", "x", "view", 1.0)])
    snap = model.snapshot()
    loaded = Snapshot.load(snap.save(tmp_path))
    assert loaded.n_items == 1 and loaded.n_links == 0
    assert recommend(loaded, [], 3) == recommend(snap, [], 3)
    assert [r.item_id for r in recommend(loaded, [], 3)] == ["x"]


def test_empty_model_round_trips(tmp_path):
    snap = CoVisitModel().snapshot()
    loaded = Snapshot.load(snap.save(tmp_path))
    assert loaded.n_items == 0 and loaded.n_links == 0


# --- broken directories ------------------------------------------------------------------------

def test_no_metadata(tmp_path):
    with pytest.raises(SnapshotError, match="no metadata.json; not a covisit snapshot"):
        Snapshot.load(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(SnapshotError, match="no metadata.json"):
        Snapshot.load(tmp_path / "nope")


def test_arrays_without_metadata(saved):
    (saved / METADATA_FILE).unlink()
    with pytest.raises(SnapshotError, match="not a covisit snapshot"):
        Snapshot.load(saved)


def test_metadata_not_json(saved):
    (saved / METADATA_FILE).write_text("{not json")
    with pytest.raises(SnapshotError, match="unreadable metadata"):
        Snapshot.load(saved)


def test_metadata_not_an_object(saved):
    write_meta(saved, [1, 2, 3])
    with pytest.raises(SnapshotError, match="not a JSON object"):
        Snapshot.load(saved)


@pytest.mark.parametrize("meta", [{"format": "something-else", "format_version": 1}, {"hello": 1}])
def test_foreign_json(saved, meta):
    write_meta(saved, meta)
    with pytest.raises(SnapshotError, match=r"not a covisit snapshot \(format"):
        Snapshot.load(saved)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unsupported_format_version(saved, version):
    meta = read_meta(saved)
    meta["format_version"] = version
    write_meta(saved, meta)
    with pytest.raises(SnapshotError, match=rf"format_version {version!r} is not supported"):
        Snapshot.load(saved)


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_missing_array_file(saved, name):
    (saved / f"{name}.npy").unlink()
    with pytest.raises(SnapshotError, match=rf"{name}\.npy: missing"):
        Snapshot.load(saved)


@pytest.mark.parametrize("name, bad_dtype", [
    ("indices", np.int64), ("indptr", np.int32), ("scores", np.float64),
    ("popularity", np.float64), ("item_bytes", np.int8), ("rank", np.uint32),
])
def test_wrong_dtype(saved, name, bad_dtype):
    original = np.load(saved / f"{name}.npy")
    resave(saved, name, original.astype(bad_dtype))
    with pytest.raises(SnapshotError, match=rf"{name}\.npy: expected {np.dtype(ARRAYS[name][0])}"):
        Snapshot.load(saved)


def test_wrong_ndim(saved):
    original = np.load(saved / "scores.npy")
    resave(saved, "scores", original.reshape(1, -1))
    with pytest.raises(SnapshotError, match=r"scores\.npy: expected float32 with 1 dims"):
        Snapshot.load(saved)


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("name", ["indices", "scores", "indptr"])
def test_truncated_array_data(saved, name, mmap):
    file = saved / f"{name}.npy"
    data = file.read_bytes()
    file.write_bytes(data[:-3])  # header intact, data short
    with pytest.raises(SnapshotError, match=rf"{name}\.npy: unreadable"):
        Snapshot.load(saved, mmap=mmap)


@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_array_header(saved, mmap):
    file = saved / "indices.npy"
    file.write_bytes(file.read_bytes()[:20])
    with pytest.raises(SnapshotError, match=r"indices\.npy: unreadable"):
        Snapshot.load(saved, mmap=mmap)


def test_empty_array_file(saved):
    (saved / "indices.npy").write_bytes(b"")
    with pytest.raises(SnapshotError, match=r"indices\.npy"):
        Snapshot.load(saved)


def test_saving_over_a_mapped_snapshot_keeps_both_readable(saved):
    loaded = Snapshot.load(saved)  # memory-maps the files it is about to overwrite
    before = loaded.indices.copy()
    loaded.save(saved)
    np.testing.assert_array_equal(loaded.indices, before)
    np.testing.assert_array_equal(Snapshot.load(saved).indices, before)


def test_pickled_array_is_refused(saved):
    np.save(saved / "scores.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SnapshotError, match=r"scores\.npy: unreadable"):
        Snapshot.load(saved)


def test_indptr_end_does_not_match_indices(saved):
    indptr = np.load(saved / "indptr.npy")
    indptr[-1] += 1
    resave(saved, "indptr", indptr)
    with pytest.raises(SnapshotError, match="inconsistent snapshot: indptr does not match"):
        Snapshot.load(saved)


def test_indptr_wrong_length(saved):
    indptr = np.load(saved / "indptr.npy")
    resave(saved, "indptr", np.append(indptr, indptr[-1]))
    with pytest.raises(SnapshotError, match="indptr does not match"):
        Snapshot.load(saved)


def test_indptr_not_monotonic(saved):
    indptr = np.load(saved / "indptr.npy")
    assert len(indptr) > 2 and indptr[-1] > 0
    indptr[1] = indptr[-1] + 1
    resave(saved, "indptr", indptr)
    with pytest.raises(SnapshotError, match="indptr is not monotonic"):
        Snapshot.load(saved)


@pytest.mark.parametrize("bad", [5, 1000, -1])  # 5 items: ids 0..4
def test_indices_out_of_range(saved, bad):
    indices = np.load(saved / "indices.npy")
    indices[0] = bad
    resave(saved, "indices", indices)
    with pytest.raises(SnapshotError, match="indices out of range"):
        Snapshot.load(saved)


def test_scores_length_mismatch(saved):
    scores = np.load(saved / "scores.npy")
    resave(saved, "scores", scores[:-1])
    with pytest.raises(SnapshotError, match="scores and indices differ in length"):
        Snapshot.load(saved)


@pytest.mark.parametrize("name", ["popularity", "fill_order", "rank"])
def test_per_item_array_wrong_length(saved, name):
    array = np.load(saved / f"{name}.npy")
    resave(saved, name, array[:-1])
    with pytest.raises(SnapshotError, match=f"{name} has 4 entries for 5 items"):
        Snapshot.load(saved)


def test_fill_order_not_a_permutation(saved):
    fill_order = np.load(saved / "fill_order.npy")
    fill_order[0] = fill_order[1]
    resave(saved, "fill_order", fill_order)
    with pytest.raises(SnapshotError, match="fill_order is not a permutation"):
        Snapshot.load(saved)


def test_item_offsets_inconsistent(saved):
    offsets = np.load(saved / "item_offsets.npy")
    offsets[-1] += 1
    resave(saved, "item_offsets", offsets)
    with pytest.raises(SnapshotError, match="inconsistent snapshot"):
        Snapshot.load(saved)


def test_item_bytes_not_utf8(saved):
    blob = np.load(saved / "item_bytes.npy")
    blob[0] = 0xFF
    resave(saved, "item_bytes", blob)
    with pytest.raises(SnapshotError, match="inconsistent snapshot"):
        Snapshot.load(saved)


def test_duplicate_item_ids(saved):
    resave(saved, "item_bytes", np.frombuffer(b"aaaaa", dtype=np.uint8))
    resave(saved, "item_offsets", np.arange(6, dtype=np.int64))
    with pytest.raises(SnapshotError, match="duplicate"):
        Snapshot.load(saved)


@pytest.mark.parametrize("key", ["model_version", "event_watermark", "created_at", "config"])
def test_metadata_missing_field(saved, key):
    meta = read_meta(saved)
    del meta[key]
    write_meta(saved, meta)
    with pytest.raises(SnapshotError, match="inconsistent snapshot"):
        Snapshot.load(saved)


@pytest.mark.parametrize("config", [{"window": 0}, {"bogus": 1}, "not a dict"])
def test_metadata_bad_config(saved, config):
    meta = read_meta(saved)
    meta["config"] = config
    write_meta(saved, meta)
    with pytest.raises(SnapshotError, match="inconsistent snapshot"):
        Snapshot.load(saved)


def test_snapshot_error_is_a_value_error():
    assert issubclass(SnapshotError, ValueError)
