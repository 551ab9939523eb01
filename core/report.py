"""Offline figures from a prediction log (prediction_log.py): CTR, hit rate, coverage, exposure
concentration and source shares, overall and per (model version, arm).

Impressions and clicks are joined to their response by request id; those whose response is not
in the log (rotated out, or dropped) are counted apart, as unmatched, and left out of the
figures. Exposure is what the responses recommended (every slot), as in exposure.py.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from covisit.core.exposure import SOURCE_NAMES, exposure_stats, histogram
from covisit.core.prediction_log import log_files


class LogRecords(Iterator[dict]):
    """The records of all files in a prediction log directory, oldest file first.

    A last line without its newline that is not valid JSON was torn by a crash: it is skipped
    and counted in `torn`. Any other line that is not a JSON object is an error."""

    def __init__(self, directory: str | os.PathLike):
        self.files = log_files(directory)
        self.torn = 0
        self._records = self._read()

    def __next__(self) -> dict:
        return next(self._records)

    def _read(self) -> Iterator[dict]:
        for path in self.files:
            try:
                f = open(path, encoding="utf-8")
            except FileNotFoundError:  # a live log's writer deleted it after we listed it
                continue
            with f:
                for number, line in enumerate(f, 1):
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        if not line.endswith("\n"):  # only the last line can lack one
                            self.torn += 1
                            continue
                        raise ValueError(f"{path}:{number}: not a JSON line") from None
                    if not isinstance(record, dict):
                        raise ValueError(f"{path}:{number}: not a JSON object")
                    yield record


def read_log(directory: str | os.PathLike) -> LogRecords:
    """The records of all files, oldest file first; a torn last line (crash) is skipped and
    counted in the result's `torn`."""
    return LogRecords(directory)


@dataclass
class _Response:
    version: int
    arm: str
    items: list[tuple[str, str]]  # (item id, source name)
    impressions: int = 0
    clicks: int = 0


@dataclass
class _Group:
    responses: int = 0
    impressions: int = 0
    clicks: int = 0
    shown: int = 0  # responses with at least one impression
    hit: int = 0  # ... of which at least one was clicked
    item_counts: Counter = field(default_factory=Counter)
    slots_by_source: list[int] = field(default_factory=lambda: [0] * len(SOURCE_NAMES))

    def add(self, r: _Response) -> None:
        self.responses += 1
        self.impressions += r.impressions
        self.clicks += r.clicks
        self.shown += r.impressions > 0
        self.hit += r.impressions > 0 and r.clicks > 0
        for item, source in r.items:
            self.item_counts[item] += 1
            self.slots_by_source[SOURCE_NAMES.index(source)] += 1

    def figures(self, catalog_size: int) -> dict[str, Any]:
        exposure = exposure_stats(self.responses, histogram(self.item_counts.values()), self.slots_by_source,
                                  catalog_size)
        return {"responses": self.responses, "impressions": self.impressions, "clicks": self.clicks,
                "ctr": self.clicks / self.impressions if self.impressions else 0.0,
                "hit_rate": self.hit / self.shown if self.shown else 0.0,
                "slots": exposure.slots, "distinct_items": exposure.distinct_items,
                "coverage": exposure.coverage, "gini": exposure.gini,
                "entropy_bits": exposure.entropy_bits, "source_shares": exposure.source_shares}


def report(directory: str | os.PathLike, catalog_size: int | None = None) -> dict:
    """The figures of the log in `directory`.

    Coverage and Gini are over `catalog_size` items, or, when it is None, over the distinct
    items the log mentions anywhere (responses, contexts, impressions, clicks); "coverage_basis"
    says which. Entropy is over the items recommended. Returns {"files", "records", "torn_lines", "coverage_basis",
    "catalog_size", "unmatched_impressions", "unmatched_clicks", "overall": figures,
    "groups": [{"version", "arm", **figures}] by version then arm}, where figures holds
    responses, impressions, clicks, ctr, hit_rate, slots, distinct_items, coverage, gini,
    entropy_bits and source_shares."""
    records = read_log(directory)
    responses: dict[str, _Response] = {}
    impressions: Counter[str] = Counter()  # request id -> items shown
    clicks: Counter[str] = Counter()
    seen: set[str] = set()
    n_records = 0
    for record in records:
        n_records += 1
        kind, request_id = record.get("type"), record.get("request_id")
        if kind == "response":
            items = [(i["item_id"], i["source"]) for i in record["items"]]
            responses[request_id] = _Response(record["version"], record["arm"], items)
            seen.update(item for item, _ in items)
            seen.update(record["context"])
        elif kind == "impression":
            impressions[request_id] += len(record["item_ids"])
            seen.update(record["item_ids"])
        elif kind == "click":
            clicks[request_id] += 1
            seen.add(record["item_id"])
    for request_id, n in impressions.items():
        if request_id in responses:
            responses[request_id].impressions = n
    for request_id, n in clicks.items():
        if request_id in responses:
            responses[request_id].clicks = n

    overall = _Group()
    groups: dict[tuple[int, str], _Group] = {}
    for r in responses.values():
        overall.add(r)
        groups.setdefault((r.version, r.arm), _Group()).add(r)
    size = len(seen) if catalog_size is None else catalog_size
    return {
        "files": len(records.files), "records": n_records, "torn_lines": records.torn,
        "coverage_basis": "items seen in the log" if catalog_size is None else "catalog",
        "catalog_size": size,
        "unmatched_impressions": sum(n for rid, n in impressions.items() if rid not in responses),
        "unmatched_clicks": sum(n for rid, n in clicks.items() if rid not in responses),
        "overall": overall.figures(size),
        "groups": [{"version": version, "arm": arm, **g.figures(size)}
                   for (version, arm), g in sorted(groups.items())],
    }


_COLUMNS = (  # header, key, format
    ("responses", "responses", "{:d}"), ("impressions", "impressions", "{:d}"),
    ("clicks", "clicks", "{:d}"), ("CTR", "ctr", "{:.4f}"), ("hit rate", "hit_rate", "{:.3f}"),
    ("coverage", "coverage", "{:.3f}"), ("Gini", "gini", "{:.3f}"),
    ("entropy", "entropy_bits", "{:.2f}"),
)


def format_report(rep: dict) -> str:
    """A readable text table of `report`'s result: one row per (version, arm), then overall."""
    n = rep["catalog_size"]
    basis = (f"catalog size {n}" if rep["coverage_basis"] == "catalog"
             else f"{n} distinct items seen in the log (no catalog size given)")
    lines = [f"prediction log: {rep['files']} file(s), {rep['records']} records, "
             f"{rep['torn_lines']} torn line(s) skipped",
             f"coverage: distinct items recommended / {basis}; Gini over the same {n} items; "
             "entropy in bits over the items recommended",
             f"unmatched (response not in the log): {rep['unmatched_impressions']} impressions, "
             f"{rep['unmatched_clicks']} clicks", ""]
    header = ["version", "arm", *(h for h, _, _ in _COLUMNS), *(n.lower() for n in SOURCE_NAMES)]
    rows = [[str(g["version"]), g["arm"], *_cells(g)] for g in rep["groups"]]
    rows.append(["all", "", *_cells(rep["overall"])])
    widths = [max(len(row[c]) for row in (header, *rows)) for c in range(len(header))]
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                 *(cell.rjust(width) for cell, width in zip(row[2:], widths[2:]))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _cells(figures: dict) -> list[str]:
    return [*(fmt.format(figures[key]) for _, key, fmt in _COLUMNS),
            *(f"{figures['source_shares'][name]:.1%}" for name in SOURCE_NAMES)]
