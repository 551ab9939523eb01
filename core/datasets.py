"""Readers that turn event files and public dataset presets into checked Events."""

from __future__ import annotations

import csv
import gzip
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import IO, Any

from covisit.core.events import DEFAULT_EVENT_WEIGHTS, Event, InvalidEvent, check_event

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")
DIGINETICA_VIEWS = "sample_train-item-views.csv"


@dataclass
class ReadReport:
    events: list[Event] = field(default_factory=list)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (1-based line in the file, reason)
    skipped: dict[str, int] = field(default_factory=dict)  # rows a preset leaves out on purpose, by reason


class BadRow(ValueError):
    """A row that strict mode refuses; the message is `<path>:<line>: <reason>`."""

    def __init__(self, path: str | Path, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{path}:{line}: {reason}")


class _Skip(Exception):
    """Raised by a row converter for a row a preset leaves out deliberately."""


# --- files -------------------------------------------------------------------------------------


def _open(path: Path) -> IO[str]:
    # utf-8-sig drops an Excel BOM; surrogateescape lets bad bytes reach check_event,
    # which then names the offending field instead of the whole read failing.
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv_rows(f: IO[str], path: Path, required: Iterable[str], delimiter: str = ",",
              ) -> tuple[dict[str, int], int, Iterator[tuple[int, list[str]]]]:
    """Check the header; return (column -> index, header width, rows numbered by the line they start on)."""
    reader = csv.reader(f, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{path}: empty file, expected a header row")
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: header lacks required column(s) {', '.join(missing)}; got {header}")
    columns = {name: i for i, name in enumerate(header)}

    def rows() -> Iterator[tuple[int, list[str]]]:
        start = reader.line_num + 1  # a quoted field may span lines: report where the row starts
        for row in reader:
            if row:  # a blank line carries no row
                yield start, row
            start = reader.line_num + 1

    return columns, len(header), rows()


def _check_width(row: list[str], width: int) -> None:
    # A short or long row means a broken quote or delimiter: its fields cannot be trusted.
    if len(row) != width:
        raise ValueError(f"expected {width} columns, got {len(row)}")


def _read(path: Path, records: Iterable[tuple[int, Any]], to_event: Callable[[Any], Event],
          event_weights: dict[str, float], strict: bool) -> ReadReport:
    """The one row loop every reader shares: convert, check, and account for each row."""
    report = ReadReport()
    for line, record in records:
        try:
            event = to_event(record)
            check_event(event, event_weights)
        except _Skip as skip:
            reason = str(skip)
            report.skipped[reason] = report.skipped.get(reason, 0) + 1
            continue
        except ValueError as exc:  # InvalidEvent, bad JSON, bad number or date
            if strict:
                raise BadRow(path, line, str(exc)) from exc
            report.bad_rows.append((line, str(exc)))
            continue
        report.events.append(event)
    if report.bad_rows:
        first = ", ".join(str(line) for line, _ in report.bad_rows[:5])
        log.warning("%s: %d bad row(s) left out (first at line(s) %s)", path, len(report.bad_rows), first)
    return report


# --- fields ------------------------------------------------------------------------------------


def _iso_seconds(text: str, field_name: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidEvent(field_name, f"not an ISO 8601 date-time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # naive times in event files are UTC by contract
    return moment.timestamp()


def _parse_timestamp(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        for parse in (float, lambda text: _iso_seconds(text, "timestamp")):
            try:
                return parse(value)
            except ValueError:
                pass
    raise InvalidEvent("timestamp", f"not unix seconds or ISO 8601: {value!r}")


def _event_from_fields(fields: Mapping[str, Any]) -> Event:
    """The generic row: a mapping with the required keys and an optional session_id."""
    for name in REQUIRED_COLUMNS:
        if name not in fields:
            raise InvalidEvent(name, "missing")
    session_id = fields.get("session_id")
    return Event(
        user_id=fields["user_id"],  # not coerced: check_event names a non-string id
        item_id=fields["item_id"],
        event_type=fields["event_type"],
        timestamp=_parse_timestamp(fields["timestamp"]),
        session_id=session_id if session_id != "" else None,
    )


def _json_fields(line: str) -> Mapping[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


# --- readers -----------------------------------------------------------------------------------


def read_events_file(path: str | Path, *, event_weights: dict[str, float] = DEFAULT_EVENT_WEIGHTS,
                     strict: bool = False) -> ReadReport:
    """Read a generic .csv or .jsonl/.json events file, optionally gzipped."""
    path = Path(path)
    kind = path.with_suffix("").suffix if path.suffix == ".gz" else path.suffix
    if kind not in (".csv", ".jsonl", ".json"):
        raise ValueError(f"{path}: unsupported file type {kind!r}; expected .csv, .jsonl or .json, optionally .gz")
    with _open(path) as f:
        if kind != ".csv":
            lines = ((n, text) for n, text in enumerate(f, start=1) if text.strip())
            return _read(path, lines, lambda text: _event_from_fields(_json_fields(text)), event_weights, strict)
        columns, width, rows = _csv_rows(f, path, REQUIRED_COLUMNS)
        wanted = [c for c in (*REQUIRED_COLUMNS, "session_id") if c in columns]

        def from_csv(row: list[str]) -> Event:
            _check_width(row, width)
            return _event_from_fields({c: row[columns[c]] for c in wanted})

        return _read(path, rows, from_csv, event_weights, strict)


def read_online_retail(path: str | Path, *, strict: bool = False) -> ReadReport:
    """Read the UCI Online Retail CSV(.gz): one purchase per invoice line, cancellations left out."""
    path = Path(path)
    with _open(path) as f:
        names = ("InvoiceNo", "StockCode", "InvoiceDate", "CustomerID")
        columns, width, rows = _csv_rows(f, path, names)
        invoice, stock, when, customer = (columns[c] for c in names)

        def to_event(row: list[str]) -> Event:
            _check_width(row, width)
            if row[invoice].startswith("C"):
                raise _Skip("cancellation")  # a refund, not a sign of interest
            # Returns (Quantity <= 0) and postage/fee codes stay: filtering them is a modelling choice.
            user = row[customer]
            whole, _, fraction = user.partition(".")
            if fraction and not fraction.strip("0"):
                user = whole  # the file may carry float-formatted ids: "17850.0" is customer 17850
            return Event(
                user_id=user or "guest-" + row[invoice],  # anonymous buyers: one guest per invoice
                item_id=row[stock],
                event_type="purchase",
                timestamp=_iso_seconds(row[when], "InvoiceDate"),
                session_id=row[invoice],
            )

        return _read(path, rows, to_event, DEFAULT_EVENT_WEIGHTS, strict)


def read_diginetica(directory: str | Path, *, strict: bool = False) -> ReadReport:
    """Read the CIKM Cup 2016 DIGINETICA item views (the directory, or the views file itself)."""
    path = Path(directory)
    if path.is_dir():
        path = path / DIGINETICA_VIEWS
    with _open(path) as f:
        names = ("session_id", "user_id", "item_id", "timeframe", "eventdate")
        columns, width, rows = _csv_rows(f, path, names, delimiter=";")
        session, user, item, frame, day = (columns[c] for c in names)
        midnights: dict[str, float] = {}  # few distinct dates, many rows

        def to_event(row: list[str]) -> Event:
            _check_width(row, width)
            if row[day] not in midnights:
                try:
                    moment = datetime.combine(date.fromisoformat(row[day]), datetime.min.time(), timezone.utc)
                except ValueError:
                    raise InvalidEvent("eventdate", f"not a YYYY-MM-DD date: {row[day]!r}") from None
                midnights[row[day]] = moment.timestamp()
            try:
                offset_ms = int(row[frame])
            except ValueError:
                raise InvalidEvent("timeframe", f"not integer milliseconds: {row[frame]!r}") from None
            return Event(
                user_id=row[user] if row[user] != "NA" else "guest-" + row[session],
                item_id=row[item],
                event_type="view",
                timestamp=midnights[row[day]] + offset_ms / 1000,
                session_id=row[session],
            )

        return _read(path, rows, to_event, DEFAULT_EVENT_WEIGHTS, strict)


PRESETS: dict[str, Callable[..., ReadReport]] = {
    "online-retail": read_online_retail,
    "diginetica": read_diginetica,
}


def read_preset(name: str, path: str | Path, *, strict: bool = False) -> ReadReport:
    """Read a public dataset by preset name."""
    try:
        reader = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
    return reader(path, strict=strict)
