"""The serving snapshot: an immutable, versioned model, saved as .npy arrays plus JSON metadata.

A request reads one Snapshot reference and uses only it, so publishing a new model is a single
assignment. Saved snapshots load with mmap_mode='r'; nothing is ever pickled.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covisit.core import kernels_build as kb
from covisit.core.config import ModelConfig
from covisit.core.interning import IdMap, IdMapView

FORMAT = "covisit-snapshot"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
# name -> (dtype, ndim) of every array file in a snapshot directory.
ARRAYS = {
    "indptr": (np.int64, 1),
    "indices": (np.int32, 1),
    "scores": (np.float32, 1),
    "popularity": (np.float32, 1),
    "fill_order": (np.int32, 1),
    "rank": (np.int32, 1),
    "item_bytes": (np.uint8, 1),
    "item_offsets": (np.int64, 1),
}


# splice_rows with nothing to splice in: packs the rows
_NO_ROWS = np.empty(0, dtype=np.int64)
_NO_CSR = (np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32))


class SnapshotError(ValueError):
    """A directory that is not a readable covisit snapshot."""


def read_json(path: Path, missing: str) -> dict:
    """The JSON object in `path`; SnapshotError(`missing`) if there is no such file, and a
    SnapshotError naming the file if it does not hold a JSON object."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise SnapshotError(missing) from None
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path}: unreadable metadata ({exc})") from None
    if not isinstance(value, dict):
        raise SnapshotError(f"{path}: not a JSON object")
    return value


@dataclass(frozen=True, eq=False)
class Snapshot:
    version: int
    parent: int | None
    config: ModelConfig
    items: IdMap | IdMapView  # a view of the live model's ids, or loaded from disk
    # Row r is indices[starts[r]:ends[r]] (its neighbours, best first) with their similarity
    # scores. The arrays may be a pool shared with other snapshots of the same model, holding
    # their rows too: an incremental snapshot appends only its changed rows.
    starts: np.ndarray  # int64, n_items
    ends: np.ndarray  # int64, n_items
    indices: np.ndarray  # int32
    scores: np.ndarray  # float32
    n_links: int  # neighbours in all rows
    max_row_length: int  # at least the longest row (sizes the request kernel's scratch table)
    popularity: np.ndarray  # float32, decayed weighted event count per item
    fill_order: np.ndarray  # int32, item ids most popular first
    rank: np.ndarray  # int32, position of each item in fill_order (the tie-break)
    watermark: int = 0  # events reflected in this model
    created_at: float = field(default_factory=time.time)
    meta: dict = field(default_factory=dict)  # extra facts (build time, gate metrics, ...)

    @classmethod
    def from_csr(cls, indptr: np.ndarray, **fields) -> Snapshot:
        """A snapshot whose rows are a compact CSR (`indptr`, int64, n_items + 1)."""
        return cls(starts=indptr[:-1], ends=indptr[1:], n_links=int(indptr[-1]),
                   max_row_length=int(np.diff(indptr).max(initial=0)), **fields)

    @property
    def n_items(self) -> int:
        return len(self.starts)

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of item id `r`, best first, and their scores."""
        return self.indices[self.starts[r]:self.ends[r]], self.scores[self.starts[r]:self.ends[r]]

    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows as a compact CSR (indptr, indices, scores): views when they already are one."""
        n = self.n_items
        if n == 0 or (self.starts[0] == 0 and np.array_equal(self.starts[1:], self.ends[:-1])):
            indptr = np.empty(n + 1, dtype=np.int64)
            indptr[:n] = self.starts
            indptr[n] = self.ends[-1] if n else 0
            return indptr, self.indices[:indptr[n]], self.scores[:indptr[n]]
        out = (np.empty(n + 1, dtype=np.int64), np.empty(self.n_links, dtype=np.int32),
               np.empty(self.n_links, dtype=np.float32))
        kb.splice_rows(self.starts, self.ends, self.indices, self.scores, _NO_ROWS, *_NO_CSR, *out)
        return out

    def nbytes(self) -> int:
        """Bytes of the serving arrays (excluding the id strings; a shared pool counted whole)."""
        return sum(getattr(self, n).nbytes for n in ("starts", "ends", "indices", "scores",
                                                     "popularity", "fill_order", "rank"))

    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_version": self.version,
            "parent_version": self.parent,
            "created_at": self.created_at,
            "event_watermark": self.watermark,
            "config": self.config.to_dict(),
            "counts": {"items": self.n_items, "links": self.n_links, "events": self.watermark},
            "meta": self.meta,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write arrays, then metadata: only a directory with metadata holds a whole save.

        Each file is written aside and renamed into place, so saving over a snapshot that is
        still memory-mapped (even this one) never truncates the arrays under the reader."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / METADATA_FILE).unlink(missing_ok=True)  # the old save is no longer whole
        blob, offsets = self.items.to_arrays()
        indptr, indices, scores = self.csr()
        arrays = {"item_bytes": blob, "item_offsets": offsets, "indptr": indptr,
                  "indices": indices, "scores": scores}
        for name in ARRAYS:
            array = arrays.get(name)
            tmp = path / f"{name}.tmp.npy"
            np.save(tmp, getattr(self, name) if array is None else array, allow_pickle=False)
            os.replace(tmp, path / f"{name}.npy")
        tmp = path / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(self.metadata(), indent=2, sort_keys=True))
        os.replace(tmp, path / METADATA_FILE)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> Snapshot:
        path = Path(directory)
        meta_path = path / METADATA_FILE
        meta = read_json(meta_path, f"{path}: no {METADATA_FILE}; not a covisit snapshot")
        if meta.get("format") != FORMAT:
            raise SnapshotError(f"{meta_path}: not a covisit snapshot (format {meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise SnapshotError(f"{meta_path}: format_version {meta.get('format_version')!r} "
                                f"is not supported (expected {FORMAT_VERSION})")
        arrays = {}
        for name, (dtype, ndim) in ARRAYS.items():
            file = path / f"{name}.npy"
            try:
                array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
            except FileNotFoundError:
                raise SnapshotError(f"{file}: missing") from None
            except (OSError, ValueError, EOFError) as exc:
                raise SnapshotError(f"{file}: unreadable ({exc})") from None
            if array.dtype != dtype or array.ndim != ndim:
                raise SnapshotError(f"{file}: expected {np.dtype(dtype)} with {ndim} dims, "
                                    f"got {array.dtype} with {array.ndim}")
            arrays[name] = array
        indptr = arrays["indptr"]
        if len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(arrays["indices"]):
            raise SnapshotError("inconsistent snapshot: indptr does not match the item count and "
                                "indices")
        if np.any(np.diff(indptr) < 0):
            raise SnapshotError("inconsistent snapshot: indptr is not monotonic")
        try:
            items = IdMap.from_arrays(arrays.pop("item_bytes"), arrays.pop("item_offsets"))
            config = ModelConfig.from_dict(meta["config"])
            snapshot = cls.from_csr(version=int(meta["model_version"]),
                                    parent=meta.get("parent_version"), config=config, items=items,
                                    watermark=int(meta["event_watermark"]),
                                    created_at=float(meta["created_at"]),
                                    meta=dict(meta.get("meta", {})), **arrays)
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise SnapshotError(f"{path}: inconsistent snapshot ({exc})") from None
        snapshot.check()
        return snapshot

    def check(self) -> None:
        """Raise SnapshotError unless the arrays describe one consistent model."""
        n = len(self.items)
        starts, ends = self.starts, self.ends
        problems = []
        if len(starts) != n or len(ends) != n:
            problems.append("indptr does not match the item count and indices")
        elif n and (starts.min() < 0 or np.any(ends < starts) or ends.max() > len(self.indices)):
            problems.append("row bounds outside the indices")
        elif int((ends - starts).sum()) != self.n_links:
            problems.append(f"n_links is {self.n_links}, the rows hold {int((ends - starts).sum())}")
        if len(self.scores) != len(self.indices):
            problems.append("scores and indices differ in length")
        if not problems:
            live = self.csr()[1]  # a pool may hold cells no row uses
            if len(live) and (live.min() < 0 or live.max() >= n):
                problems.append("indices out of range")
        for name in ("popularity", "fill_order", "rank"):
            if len(getattr(self, name)) != n:
                problems.append(f"{name} has {len(getattr(self, name))} entries for {n} items")
        if not problems and n and not np.array_equal(np.sort(self.fill_order), np.arange(n)):
            problems.append("fill_order is not a permutation of the items")
        if problems:
            raise SnapshotError("inconsistent snapshot: " + "; ".join(problems))
