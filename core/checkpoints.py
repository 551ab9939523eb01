"""Checkpoints: a serving snapshot plus the exact model state, kept so a restart resumes learning.

On disk: `<directory>/v<version:012d>/` holding `snapshot/` (Snapshot.save), `model/`
(save_model) and `checkpoint.json`. A checkpoint is written in a temp dir beside the others,
fsynced and renamed into place, so it is whole or absent; deletion renames it aside first. Temp
dirs a crash left behind are removed when the store opens. A restart loads the newest loadable
checkpoint and replays the event log from its `event_watermark`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import io
import re
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from covisit.core.config import ModelConfig
from covisit.core.durable import fsync_dir, write_durably
from covisit.core.errors import NotFound
from covisit.core.model import CoVisitModel
from covisit.core.model_state import load_model, require_config, save_model
from covisit.core.snapshot import Snapshot, SnapshotError, read_json

log = logging.getLogger(__name__)

FORMAT = "covisit-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.json"
# States a checkpoint on disk can be in (a BUILDING one exists only in memory).
AVAILABLE = "AVAILABLE"
SERVING = "SERVING"
SHADOW = "SHADOW"
CANDIDATE = "CANDIDATE"
REJECTED = "REJECTED"
RETIRED = "RETIRED"
STATES = (AVAILABLE, SERVING, SHADOW, CANDIDATE, REJECTED, RETIRED)
_VERSION_DIR = re.compile(r"^v(\d{12})$")
_TEMP_PREFIX = ".tmp-"
SNAPSHOT_ONLY = "snapshot_only"  # metrics key of a checkpoint saved without its model


@dataclass(frozen=True)
class CheckpointInfo:
    """The contents of checkpoint.json."""

    version: int
    parent_version: int | None
    event_watermark: int  # event-log offset the model reflects: replay from here
    created_at: float
    build_seconds: float
    state: str = AVAILABLE
    reason: str = ""
    metrics: dict = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                           **dataclasses.asdict(self)}, indent=2, sort_keys=True).encode()

    @classmethod
    def read(cls, file: Path) -> CheckpointInfo:
        meta = read_json(file, f"{file}: missing")
        if meta.pop("format", None) != FORMAT:
            raise SnapshotError(f"{file}: not a covisit checkpoint")
        if meta.pop("format_version", None) != FORMAT_VERSION:
            raise SnapshotError(f"{file}: format_version is not {FORMAT_VERSION}")
        try:
            info = cls(**meta)
        except TypeError as exc:
            raise SnapshotError(f"{file}: bad fields ({exc})") from None
        if (not _count(info.version) or not _count(info.event_watermark)
                or not (info.parent_version is None or _count(info.parent_version))
                or not all(isinstance(x, (int, float)) for x in (info.created_at, info.build_seconds))
                or info.state not in STATES or not isinstance(info.reason, str)
                or not isinstance(info.metrics, dict)):
            raise SnapshotError(f"{file}: invalid version, watermark, times, state or metrics")
        return info


class CheckpointStore:
    def __init__(self, directory: str | os.PathLike, keep: int = 10):
        if keep < 1:
            raise ValueError(f"keep={keep!r}: must be at least 1")
        self.directory = Path(directory)
        self.keep = keep
        self.skipped: list[tuple[int, str]] = []  # (version, why) from the last newest_loadable
        self._lock = threading.Lock()  # orders set_state, prune and a save's final rename
        self.directory.mkdir(parents=True, exist_ok=True)
        leftovers = [p for p in self.directory.iterdir() if p.name.startswith(_TEMP_PREFIX)]
        for path in leftovers:
            log.warning("checkpoints: removing %s left by an interrupted save or prune", path)
            shutil.rmtree(path, ignore_errors=True)
        if leftovers:
            fsync_dir(self.directory)

    def path(self, version: int) -> Path:
        return self.directory / f"v{version:012d}"

    def save(self, snapshot: Snapshot, model: CoVisitModel | None, watermark: int, *,
             state: str = AVAILABLE, reason: str = "", metrics: dict | None = None,
             build_seconds: float | None = None) -> CheckpointInfo:
        """Persist `snapshot` and `model` (which must not change meanwhile) as one checkpoint.

        `watermark` is the event-log offset `model` reflects; a restart replays from it.
        Without a model the checkpoint can serve (e.g. a pinned rollback target) but is no
        starting point for learning."""
        if state not in STATES:
            raise ValueError(f"state={state!r}: must be one of {STATES}")
        if not _count(watermark):
            raise ValueError(f"watermark={watermark!r}: must be an integer >= 0")
        if model is not None and snapshot.config != model.config:
            raise ValueError("snapshot and model were built with different configs")
        if build_seconds is None:
            build_seconds = float(snapshot.meta.get("build_seconds", 0.0))
        info = CheckpointInfo(version=snapshot.version, parent_version=snapshot.parent,
                              event_watermark=watermark, created_at=time.time(),
                              build_seconds=build_seconds, state=state, reason=reason,
                              metrics={**(metrics or {}), **({} if model else {SNAPSHOT_ONLY: 1})})
        text = info.to_json()  # fails on metrics JSON cannot hold, before anything is written
        final = self.path(info.version)
        if final.exists():
            raise ValueError(f"checkpoint {final} already exists")
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{final.name}-", dir=self.directory))
        try:
            snapshot.save(tmp / "snapshot")
            _fsync_tree(tmp / "snapshot")  # Snapshot.save renames but does not fsync
            if model is not None:
                save_model(model, tmp / "model")
            write_durably(tmp / CHECKPOINT_FILE, lambda f: f.write(text))
            fsync_dir(tmp)
            with self._lock:
                if final.exists():
                    raise ValueError(f"checkpoint {final} already exists")
                os.rename(tmp, final)
                fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("checkpoint v%d saved (watermark %d, %s)", info.version, watermark, state)
        return info

    def export(self, version: int) -> bytes:
        """The checkpoint as one uncompressed tar (its arrays hardly compress), for a store
        other replicas read (`import_archive`)."""
        path = self._existing(version)
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            tar.add(path, arcname=".")
        return out.getvalue()

    def import_archive(self, version: int, data: bytes) -> CheckpointInfo:
        """Unpack `export(version)`'s tar as checkpoint `version` (whole or not at all), unless
        it is here already."""
        final = self.path(version)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{final.name}-", dir=self.directory))
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                tar.extractall(tmp, filter="data")  # no links or paths out of tmp
            info = CheckpointInfo.read(tmp / CHECKPOINT_FILE)
            if info.version != version:
                raise SnapshotError(f"the archive of v{version} holds v{info.version}")
            _fsync_tree(tmp)
            with self._lock:
                if not final.exists():
                    os.rename(tmp, final)
                    fsync_dir(self.directory)
        except tarfile.TarError as exc:
            raise SnapshotError(f"the archive of v{version} is unreadable ({exc})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.get(version)

    def has(self, version: int) -> bool:
        return (self.path(version) / CHECKPOINT_FILE).is_file()

    def list(self) -> list[CheckpointInfo]:
        """Readable checkpoints, newest first; unreadable ones are logged and left out."""
        out = []
        for version in self._versions():
            try:
                out.append(self.get(version))
            except (SnapshotError, NotFound) as exc:
                log.warning("checkpoints: skipping v%d: %s", version, exc)
        return out

    def get(self, version: int) -> CheckpointInfo:
        path = self._existing(version)
        info = CheckpointInfo.read(path / CHECKPOINT_FILE)
        if info.version != version:
            raise SnapshotError(f"{path / CHECKPOINT_FILE}: says version {info.version}")
        return info

    def load_snapshot(self, version: int) -> Snapshot:
        """The checkpoint's serving snapshot, memory-mapped."""
        path = self._existing(version) / "snapshot"
        snapshot = Snapshot.load(path)
        if snapshot.version != version:
            raise SnapshotError(f"{path}: holds version {snapshot.version}, not {version}")
        return snapshot

    def load_model(self, version: int, config: ModelConfig, threads: int | None = None) -> CoVisitModel:
        return load_model(self._existing(version) / "model", config, threads)

    def set_state(self, version: int, state: str, reason: str = "") -> CheckpointInfo:
        if state not in STATES:
            raise ValueError(f"state={state!r}: must be one of {STATES}")
        with self._lock:
            info = dataclasses.replace(self.get(version), state=state, reason=reason)
            path = self.path(version)
            text = info.to_json()
            write_durably(path / CHECKPOINT_FILE, lambda f: f.write(text))
            fsync_dir(path)
        return info

    def newest_loadable(self, config: ModelConfig, threads: int | None = None,
                        skip_states: tuple[str, ...] = (REJECTED,), max_watermark: int | None = None
                        ) -> tuple[CheckpointInfo, Snapshot, CoVisitModel] | None:
        """The newest checkpoint that loads whole with `config`, or None.

        Damaged, mismatched and `skip_states` checkpoints are passed over with a warning and
        listed in `self.skipped` as (version, why)."""
        self.skipped = []
        for version in self._versions():
            try:
                info = self.get(version)
                if info.metrics.get(SNAPSHOT_ONLY):
                    continue  # nothing to learn from
                if max_watermark is not None and info.event_watermark > max_watermark:
                    raise SnapshotError(f"it learned {info.event_watermark} events but the log now ends at"
                                        f" {max_watermark} (a damaged tail was cut)")
                if info.state in skip_states:
                    raise SnapshotError(f"state {info.state} {info.reason}".rstrip())
                snapshot = self.load_snapshot(version)  # mmap: cheap, so before the model
                require_config(snapshot.config, config, self.path(version) / "snapshot")
                model = self.load_model(version, config, threads)
            except (SnapshotError, NotFound) as exc:
                log.warning("checkpoints: passing over v%d: %s", version, exc)
                self.skipped.append((version, str(exc)))
                continue
            return info, snapshot, model
        return None

    def prune(self, protect=()) -> int | None:
        """Delete checkpoints beyond the newest `keep`, except the versions in `protect`.

        Returns the smallest event_watermark among the readable checkpoints kept (the event log
        is needed from there on), or None when none is kept."""
        protect = set(protect)
        with self._lock:
            versions = self._versions()
            doomed = [v for v in versions[self.keep:] if v not in protect]
            for version in doomed:
                aside = self.directory / f"{_TEMP_PREFIX}{self.path(version).name}-deleted"
                os.rename(self.path(version), aside)  # never half a checkpoint under its name
                shutil.rmtree(aside)
                log.info("checkpoint v%d deleted", version)
            if doomed:
                fsync_dir(self.directory)
            kept = [v for v in versions if v not in doomed]
        watermarks = []
        for version in kept:
            try:
                info = self.get(version)
                if not info.metrics.get(SNAPSHOT_ONLY):  # never replayed from otherwise
                    watermarks.append(info.event_watermark)
            except (SnapshotError, NotFound) as exc:
                log.warning("checkpoints: v%d has no readable watermark: %s", version, exc)
        return min(watermarks, default=None)

    def _versions(self) -> list[int]:
        """Versions with a directory, newest first."""
        found = (_VERSION_DIR.match(p.name) for p in self.directory.iterdir() if p.is_dir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def _existing(self, version: int) -> Path:
        path = self.path(version)
        if not path.is_dir():
            raise NotFound(f"checkpoint version {version} not found in {self.directory}")
        return path


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_dir():
            _fsync_tree(path)
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)


def _count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
