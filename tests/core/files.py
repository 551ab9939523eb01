"""Small files the core tests write."""

import gzip
from pathlib import Path


def write(path: Path, text: str) -> Path:
    """Write `text` to `path`, gzipped when the name ends in .gz."""
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path
