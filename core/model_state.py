"""The learning model's exact state on disk, so a restart continues counting where it stopped.

A saved state is .npy arrays plus `state.json` (format, scalars, config), never pickled. Each
file is written aside, fsynced and renamed into place; `state.json` goes last, so only a
directory holding it is a whole save. Loading gives the model the same arrays bit for bit:
`save -> load -> update` counts exactly as a model that never stopped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from covisit.core.config import ModelConfig
from covisit.core.durable import fsync_dir, write_durably
from covisit.core.interning import IdMap
from covisit.core.model import CoVisitModel
from covisit.core.snapshot import SnapshotError, read_json

FORMAT = "covisit-model-state"
FORMAT_VERSION = 1
STATE_FILE = "state.json"
# name -> (dtype, ndim) of every array file; 2-d ones are (sequences, window).
ARRAYS = {
    "item_bytes": (np.uint8, 1),
    "item_offsets": (np.int64, 1),
    "sequence_bytes": (np.uint8, 1),
    "sequence_offsets": (np.int64, 1),
    "indptr": (np.int64, 1),
    "indices": (np.int32, 1),
    "data": (np.float64, 1),
    "popularity": (np.float64, 1),
    "hist_items": (np.int32, 2),
    "hist_w": (np.float64, 2),
    "hist_n": (np.int64, 1),
    "last_time": (np.float64, 1),
    "uses_gap": (np.bool_, 1),
}


class ConfigMismatch(SnapshotError):
    """A saved model counted with other settings than the ones asked for."""


def require_config(saved: ModelConfig, wanted: ModelConfig, where: Path) -> None:
    """Raise ConfigMismatch naming the settings in which `saved` (at `where`) differs."""
    if saved != wanted:
        theirs, mine = saved.to_dict(), wanted.to_dict()
        diff = ", ".join(f"{k}: saved {theirs[k]!r}, wanted {mine[k]!r}"
                         for k in mine if mine[k] != theirs[k])
        raise ConfigMismatch(f"{where}: saved with a different config ({diff})")


def save_model(model: CoVisitModel, directory: str | os.PathLike) -> Path:
    """Persist the model's exact counts and sequence state; the model must not change meanwhile."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / STATE_FILE).unlink(missing_ok=True)  # the old save is no longer whole
    fsync_dir(path)  # ... and must not look whole again after a crash mid-save
    k = model._n_sequences
    item_bytes, item_offsets = model.items.to_arrays()
    sequence_bytes, sequence_offsets = model.sequences.to_arrays()
    indptr, indices, data = model.csr()
    arrays = {
        "item_bytes": item_bytes, "item_offsets": item_offsets,
        "sequence_bytes": sequence_bytes, "sequence_offsets": sequence_offsets,
        "indptr": indptr, "indices": indices, "data": data,
        "popularity": model.popularity,
        # only the rows in use: the spare capacity is refilled on growth
        "hist_items": model._hist_items[:k], "hist_w": model._hist_w[:k],
        "hist_n": model._hist_n[:k], "last_time": model._last_time[:k],
        "uses_gap": model._uses_gap[:k],
    }
    for name, (dtype, _) in ARRAYS.items():
        array = np.ascontiguousarray(arrays[name], dtype=dtype)
        write_durably(path / f"{name}.npy", lambda f, a=array: np.save(f, a, allow_pickle=False))
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "n_events": model.n_events,
        "anchor": model.anchor,
        "n_sequences": k,
        "counts": {"items": len(model.items), "sequences": len(model.sequences),
                   "links": model.n_links},
        "config": model.config.to_dict(),
    }
    text = json.dumps(state, indent=2, sort_keys=True).encode()
    write_durably(path / STATE_FILE, lambda f: f.write(text))
    fsync_dir(path)
    return path


def load_model(directory: str | os.PathLike, config: ModelConfig,
               threads: int | None = None) -> CoVisitModel:
    """Load a saved model, refusing one counted with a config other than `config`."""
    path = Path(directory)
    state_path = path / STATE_FILE
    state = _read_state(state_path)
    try:
        saved = ModelConfig.from_dict(state["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{state_path}: bad config ({exc})") from None
    require_config(saved, config, state_path)
    arrays = {}
    for name, (dtype, ndim) in ARRAYS.items():
        file = path / f"{name}.npy"
        try:
            # not mmap: the model grows and rescales these arrays in place
            array = np.load(file, allow_pickle=False)
        except FileNotFoundError:
            raise SnapshotError(f"{file}: missing") from None
        except (OSError, ValueError, EOFError) as exc:
            raise SnapshotError(f"{file}: unreadable ({exc})") from None
        if array.dtype != dtype or array.ndim != ndim:
            raise SnapshotError(f"{file}: expected {np.dtype(dtype)} with {ndim} dims, "
                                f"got {array.dtype} with {array.ndim}")
        arrays[name] = array
    ids = {}
    for name in ("item", "sequence"):
        try:
            ids[name] = IdMap.from_arrays(arrays[f"{name}_bytes"], arrays[f"{name}_offsets"])
        except (ValueError, UnicodeDecodeError) as exc:
            raise SnapshotError(f"{path / f'{name}_offsets.npy'}: bad id table ({exc})") from None
    _check(path, state, arrays, ids["item"], ids["sequence"], config.window)

    model = CoVisitModel(config, threads)
    model.items, model.sequences = ids["item"], ids["sequence"]
    model.n_events = state["n_events"]
    model.anchor = None if state["anchor"] is None else float(state["anchor"])
    model._set_csr(arrays["indptr"], arrays["indices"], arrays["data"])
    model.popularity = arrays["popularity"]
    model._hist_items, model._hist_w = arrays["hist_items"], arrays["hist_w"]
    model._hist_n, model._last_time = arrays["hist_n"], arrays["last_time"]
    model._uses_gap = arrays["uses_gap"]
    model._n_sequences = state["n_sequences"]
    return model


def _read_state(state_path: Path) -> dict:
    state = read_json(state_path, f"{state_path.parent}: no {STATE_FILE}; not a saved covisit model")
    if state.get("format") != FORMAT:
        raise SnapshotError(f"{state_path}: not a saved covisit model")
    if state.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(f"{state_path}: format_version {state.get('format_version')!r} "
                            f"is not supported (expected {FORMAT_VERSION})")
    counts = state.get("counts")
    anchor = state.get("anchor")
    if not (_count(state.get("n_events")) and _count(state.get("n_sequences"))
            and isinstance(counts, dict) and all(_count(counts.get(k)) for k in ("items", "sequences", "links"))
            and (anchor is None or (isinstance(anchor, (int, float)) and math.isfinite(anchor)))):
        raise SnapshotError(f"{state_path}: missing or invalid n_events, n_sequences, counts or anchor")
    return state


def _count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check(path: Path, state: dict, a: dict, items: IdMap, sequences: IdMap, window: int) -> None:
    """Raise SnapshotError naming the files unless the arrays form one model (and match state.json)."""
    n, k, counts = len(items), state["n_sequences"], state["counts"]
    indptr, indices = a["indptr"], a["indices"]
    problems = []
    if (n, len(sequences), len(indices)) != (counts["items"], counts["sequences"], counts["links"]):
        problems.append(f"{STATE_FILE}: counts {counts} do not match the arrays "
                        f"({n} items, {len(sequences)} sequences, {len(indices)} links)")
    # rows of items interned but never counted may be missing from indptr and popularity
    if not 1 <= len(indptr) <= n + 1 or indptr[0] != 0 or indptr[-1] != len(indices):
        problems.append("indptr.npy does not match the item count and indices.npy")
    elif np.any(np.diff(indptr) < 0):
        problems.append("indptr.npy is not monotonic")
    if len(a["data"]) != len(indices):
        problems.append("data.npy and indices.npy differ in length")
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        problems.append("indices.npy out of range")
    if len(a["popularity"]) > n:
        problems.append(f"popularity.npy has {len(a['popularity'])} entries for {n} items")
    if len(sequences) > k:
        problems.append(f"{len(sequences)} sequence ids for n_sequences={k}")
    for name in ("hist_items", "hist_w"):
        if a[name].shape != (k, window):
            problems.append(f"{name}.npy has shape {a[name].shape}, expected {(k, window)}")
    for name in ("hist_n", "last_time", "uses_gap"):
        if len(a[name]) != k:
            problems.append(f"{name}.npy has {len(a[name])} entries for n_sequences={k}")
    hist = a["hist_items"]
    if hist.size and (hist.min() < -1 or hist.max() >= n):
        problems.append("hist_items.npy out of range")
    if len(a["hist_n"]) and a["hist_n"].min() < 0:
        problems.append("hist_n.npy has negative counts")
    if problems:
        raise SnapshotError(f"{path}: inconsistent model state: " + "; ".join(problems))
