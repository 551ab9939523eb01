"""Writing files so that a crash leaves the old version or the new one, never half of either."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_durably(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` aside, fsync it and rename it into place (the caller fsyncs the directory)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    """Make file names created, renamed or deleted inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
