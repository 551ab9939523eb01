"""String <-> dense int32 ids, growing online; saved as UTF-8 bytes + offsets, never pickled."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

INT32_MAX = np.iinfo(np.int32).max


class IdMap:
    """Assigns 0, 1, 2, ... to strings in the order they are first seen."""

    __slots__ = ("_ids", "_names")

    def __init__(self, names: Iterable[str] = ()):
        self._names: list[str] = []
        self._ids: dict[str, int] = {}
        for name in names:
            self.intern(name)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._ids

    def intern(self, name: str) -> int:
        """The id of `name`, assigning the next one if it is new."""
        idx = self._ids.get(name)
        if idx is None:
            idx = len(self._names)
            if idx >= INT32_MAX:
                raise OverflowError("more than 2**31 - 1 distinct ids")
            self._ids[name] = idx
            self._names.append(name)
        return idx

    def intern_all(self, names: list[str]) -> np.ndarray:
        """`intern` of each name, as int32 ids (one lookup each for names already known)."""
        get = self._ids.get
        ids = [get(name, -1) for name in names]
        if -1 in ids:
            ids = [self.intern(name) if i < 0 else i for name, i in zip(names, ids)]
        return np.array(ids, dtype=np.int32)

    def get(self, name: str, default: int = -1) -> int:
        return self._ids.get(name, default)

    def name(self, idx: int) -> str:
        return self._names[idx]

    def names(self) -> list[str]:
        return list(self._names)

    def copy(self) -> IdMap:
        clone = IdMap()
        clone._names = list(self._names)
        clone._ids = dict(self._ids)
        return clone

    def view(self) -> IdMapView:
        """The ids assigned so far, frozen in O(1) while this map keeps growing."""
        return IdMapView(self._names, self._ids, len(self._names))

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 UTF-8 bytes of all names, int64 offsets with len+1 entries)."""
        return _encode(self._names)

    @classmethod
    def from_arrays(cls, blob: np.ndarray, offsets: np.ndarray) -> IdMap:
        if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(blob):
            raise ValueError("id offsets do not match the id bytes")
        if np.any(np.diff(offsets) < 0):
            raise ValueError("id offsets are not increasing")
        raw = bytes(np.asarray(blob, dtype=np.uint8))
        bounds = offsets.tolist()
        names = [raw[bounds[i]:bounds[i + 1]].decode("utf-8") for i in range(len(bounds) - 1)]
        idmap = cls(names)
        if len(idmap) != len(names):
            raise ValueError("duplicate ids in the saved id table")
        return idmap


class IdMapView:
    """The first `n` ids of an IdMap, read-only, sharing its list and dict (a snapshot's items).

    Ids an IdMap has assigned never change and it only appends, so the prefix is immutable; ids
    from `n` on are invisible here. The owner appends under its single writer while readers use
    views: CPython list and dict reads are safe beside appends under the GIL."""

    __slots__ = ("_ids", "_n", "_names")

    def __init__(self, names: list[str], ids: dict[str, int], n: int):
        self._names, self._ids, self._n = names, ids, n

    def __len__(self) -> int:
        return self._n

    def __contains__(self, name: str) -> bool:
        return self._ids.get(name, INT32_MAX) < self._n

    def get(self, name: str, default: int = -1) -> int:
        idx = self._ids.get(name, INT32_MAX)
        return idx if idx < self._n else default

    def name(self, idx: int) -> str:
        if not 0 <= idx < self._n:
            raise IndexError(f"id {idx} not in 0..{self._n - 1}")
        return self._names[idx]

    def names(self) -> list[str]:
        return self._names[:self._n]

    def copy(self) -> IdMap:
        clone = IdMap()
        clone._names = self.names()
        clone._ids = dict(zip(clone._names, range(self._n)))
        return clone

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 UTF-8 bytes of all names, int64 offsets with len+1 entries)."""
        return _encode(self._names[:self._n])


def _encode(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [n.encode("utf-8") for n in names]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return blob, offsets
