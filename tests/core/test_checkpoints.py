"""The checkpoint store: whole-or-absent checkpoints, the newest loadable one, pruning, states."""

import io
import json
import re
import tarfile
import shutil

import numpy as np
import pytest

from covisit.core import checkpoints as cp
from covisit.core.checkpoints import CHECKPOINT_FILE, CheckpointInfo, CheckpointStore
from covisit.core.config import ModelConfig
from covisit.core.errors import NotFound
from covisit.core.events import Event
from covisit.core.model import CoVisitModel
from covisit.core.snapshot import SnapshotError

EVENTS = [Event(f"u{i % 3}", f"i{i % 5}", "view", float(i)) for i in range(30)]
OTHER = ModelConfig(window=3)


def build(n_events: int, config: ModelConfig | None = None) -> CoVisitModel:
    model = CoVisitModel(config)
    model.update(EVENTS[:n_events])
    return model


def save(store: CheckpointStore, version: int, config: ModelConfig | None = None, **kwargs) -> CheckpointInfo:
    """Checkpoint v`version`: a model of the first 5 * version events, watermark 5 * version."""
    model = build(5 * version, config)
    return store.save(model.snapshot(version, version - 1 or None), model, 5 * version, **kwargs)


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "checkpoints", keep=3)


@pytest.fixture
def three(store) -> CheckpointStore:
    for version in (1, 2, 3):
        save(store, version)
    return store


# --- save, list, get, load ---------------------------------------------------------------------

def test_save_writes_the_layout(store):
    info = save(store, 7, metrics={"recall@20": 0.25}, reason="full rebuild")
    path = store.directory / "v000000000007"
    assert {p.name for p in store.directory.iterdir()} == {path.name}  # no temp dir left
    assert {p.name for p in path.iterdir()} == {"snapshot", "model", CHECKPOINT_FILE}
    meta = json.loads((path / CHECKPOINT_FILE).read_text())
    assert meta["format"] == cp.FORMAT
    assert (meta["version"], meta["parent_version"], meta["event_watermark"]) == (7, 6, 35)
    assert (meta["state"], meta["reason"], meta["metrics"]) == ("AVAILABLE", "full rebuild", {"recall@20": 0.25})
    assert meta["build_seconds"] >= 0 and meta["created_at"] > 0
    assert store.get(7) == info


def test_list_is_newest_first_and_survives_reopening(three, tmp_path):
    assert [i.version for i in three.list()] == [3, 2, 1]
    reopened = CheckpointStore(three.directory)
    assert reopened.list() == three.list()
    assert [i.event_watermark for i in reopened.list()] == [15, 10, 5]


def test_load_snapshot_and_model(three):
    snap = three.load_snapshot(2)
    assert snap.version == 2 and snap.parent == 1
    assert isinstance(snap.indices, np.memmap)
    model = three.load_model(2, ModelConfig())
    want = build(10)
    np.testing.assert_array_equal(model.csr()[2], want.csr()[2])
    np.testing.assert_array_equal(snap.scores, want.snapshot(2).scores)
    assert model.n_events == 10


def test_an_exported_checkpoint_imports_whole_in_another_store(three, tmp_path):
    other = CheckpointStore(tmp_path / "elsewhere")
    info = other.import_archive(2, three.export(2))
    assert info == three.get(2) and other.has(2) and not other.has(3)
    assert other.load_model(2, ModelConfig()).digest() == three.load_model(2, ModelConfig()).digest()
    np.testing.assert_array_equal(other.load_snapshot(2).scores, three.load_snapshot(2).scores)
    assert other.import_archive(2, three.export(2)) == info  # again: kept as it is


def test_an_archive_that_is_not_the_version_asked_for_leaves_nothing(three, tmp_path):
    other = CheckpointStore(tmp_path / "elsewhere")
    with pytest.raises(SnapshotError, match="holds v3"):
        other.import_archive(2, three.export(3))
    with pytest.raises(SnapshotError, match="unreadable"):
        other.import_archive(2, b"not a tar")
    assert list(other.directory.iterdir()) == []


def test_an_archive_reaching_outside_its_directory_is_refused(three, tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        evil = tarfile.TarInfo("../../escaped")
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    other = CheckpointStore(tmp_path / "elsewhere")
    with pytest.raises(SnapshotError):
        other.import_archive(2, out.getvalue())
    assert not (tmp_path / "escaped").exists() and list(other.directory.iterdir()) == []


def test_missing_version_is_not_found(three):
    for call in (three.get, three.load_snapshot, lambda v: three.load_model(v, ModelConfig()),
                 lambda v: three.set_state(v, cp.RETIRED)):
        with pytest.raises(NotFound, match="version 9 not found"):
            call(9)


def test_saving_an_existing_version_is_refused(three):
    with pytest.raises(ValueError, match="already exists"):
        save(three, 2)
    assert three.get(2).event_watermark == 10


def test_failed_save_leaves_nothing(store):
    with pytest.raises(TypeError):
        save(store, 1, metrics={"bad": object()})
    with pytest.raises(ValueError, match="state"):
        save(store, 1, state="BUILDING")  # never on disk
    assert list(store.directory.iterdir()) == []


def test_unreadable_checkpoint_is_left_out_of_the_list(three):
    (three.path(2) / CHECKPOINT_FILE).write_text("{not json")
    assert [i.version for i in three.list()] == [3, 1]
    with pytest.raises(SnapshotError, match=r"v000000000002/checkpoint\.json: unreadable"):
        three.get(2)


def test_leftover_temp_dirs_are_removed_on_open(three):
    leftover = three.directory / ".tmp-v000000000004-abc"
    (leftover / "snapshot").mkdir(parents=True)
    (leftover / "snapshot" / "indptr.npy").write_bytes(b"half")
    reopened = CheckpointStore(three.directory)
    assert not leftover.exists()
    assert [i.version for i in reopened.list()] == [3, 2, 1]


# --- states ------------------------------------------------------------------------------------

def test_set_state_persists(three):
    info = three.set_state(2, cp.REJECTED, "recall fell 12%")
    assert (info.state, info.reason) == ("REJECTED", "recall fell 12%")
    reopened = CheckpointStore(three.directory)
    assert reopened.get(2) == info
    assert reopened.get(2).event_watermark == 10  # the rest is untouched
    assert not any(p.name.endswith(".tmp") for p in three.path(2).iterdir())


def test_set_state_refuses_unknown_states(three):
    with pytest.raises(ValueError, match="BUILDING"):
        three.set_state(1, "BUILDING")
    assert three.get(1).state == cp.AVAILABLE


def test_states_are_the_documented_strings():
    assert cp.STATES == ("AVAILABLE", "SERVING", "SHADOW", "CANDIDATE", "REJECTED", "RETIRED")


# --- newest_loadable ---------------------------------------------------------------------------

def test_newest_loadable_is_the_newest(three):
    info, snap, model = three.newest_loadable(ModelConfig())
    assert info.version == snap.version == 3 and model.n_events == 15
    assert three.skipped == []


def truncate(path):
    path.write_bytes(path.read_bytes()[:-16])


@pytest.mark.parametrize("damage, why", [
    (lambda p: truncate(p / "model" / "data.npy"), r"data\.npy: unreadable"),
    (lambda p: truncate(p / "snapshot" / "scores.npy"), r"scores\.npy: unreadable"),
    (lambda p: (p / CHECKPOINT_FILE).write_text('{"format": "covisit-checkpoint"'), r"checkpoint\.json: unreadable"),
    (lambda p: shutil.rmtree(p / "model"), "no state.json"),
    (lambda p: (p / "snapshot" / "metadata.json").unlink(), "no metadata.json"),
])
def test_newest_loadable_skips_a_damaged_newest(three, damage, why):
    damage(three.path(3))
    info, snap, model = three.newest_loadable(ModelConfig())
    assert info.version == snap.version == 2 and model.n_events == 10
    assert [v for v, _ in three.skipped] == [3]
    assert re.search(why, three.skipped[0][1])


def test_newest_loadable_skips_other_configs(store):
    save(store, 1)
    save(store, 2, OTHER)
    info, _, model = store.newest_loadable(ModelConfig())
    assert info.version == 1 and model.config == ModelConfig()
    assert store.skipped[0][0] == 2 and "window: saved 3, wanted 2" in store.skipped[0][1]
    assert store.newest_loadable(OTHER)[0].version == 2


def test_newest_loadable_skips_rejected(three):
    three.set_state(3, cp.REJECTED, "gate failed")
    assert three.newest_loadable(ModelConfig())[0].version == 2
    assert three.skipped == [(3, "state REJECTED gate failed")]
    assert three.newest_loadable(ModelConfig(), skip_states=())[0].version == 3


def test_newest_loadable_none_when_nothing_loads(three, tmp_path):
    for version in (1, 2, 3):
        shutil.rmtree(three.path(version) / "snapshot")
    assert three.newest_loadable(ModelConfig()) is None
    assert [v for v, _ in three.skipped] == [3, 2, 1]
    assert CheckpointStore(tmp_path / "empty").newest_loadable(ModelConfig()) is None


def test_restart_continues_from_the_watermark(three):
    # startup: newest checkpoint, then replay the log after its watermark
    info, _, model = three.newest_loadable(ModelConfig())
    model.update(EVENTS[info.event_watermark:])
    want = build(len(EVENTS))
    for name, got, expected in zip(("indptr", "indices", "data", "popularity"),
                                   (*model.csr(), model.popularity), (*want.csr(), want.popularity)):
        np.testing.assert_array_equal(got, expected, err_msg=name)


# --- prune -------------------------------------------------------------------------------------

def test_prune_keeps_the_newest_and_the_protected(store):
    for version in range(1, 6):
        save(store, version)
    assert store.prune(protect={1}) == 5  # v1's watermark: the log is needed from there
    assert [i.version for i in store.list()] == [5, 4, 3, 1]
    assert {p.name for p in store.directory.iterdir()} == {f"v{v:012d}" for v in (5, 4, 3, 1)}
    assert store.prune() == 15
    assert [i.version for i in store.list()] == [5, 4, 3]
    assert store.prune() == 15  # nothing more to delete


def test_prune_counts_unreadable_checkpoints_but_not_their_watermark(three):
    save(three, 4)
    (three.path(4) / CHECKPOINT_FILE).unlink()
    assert three.prune() == 10  # v1 deleted; v4 kept but unreadable: v2 and v3 give watermarks
    assert sorted(p.name for p in three.directory.iterdir()) == [f"v{v:012d}" for v in (2, 3, 4)]


def test_prune_with_nothing_kept(store):
    assert store.prune() is None


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        CheckpointStore(tmp_path, keep=0)

