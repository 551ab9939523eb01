"""Tests for the event file readers, on small hand-made files and the bundled Online Retail data."""

import json
import logging
import time
from pathlib import Path

import pytest

from covisit.core.datasets import (
    PRESETS,
    BadRow,
    ReadReport,
    read_diginetica,
    read_events_file,
    read_online_retail,
    read_preset,
)
from covisit.core.events import Event
from tests.core.files import write

ONLINE_RETAIL = Path(__file__).resolve().parents[2] / "loadtest" / "data" / "online_retail.csv.gz"

# Worked out independently (date -u -d '... UTC' +%s).
T_1250_UTC = 1323435000.0  # 2011-12-09 12:50:00 UTC
T_1050_UTC = 1323427800.0  # 2011-12-09 10:50:00 UTC
T_RETAIL = 1291191960.0  # 2010-12-01 08:26:00 UTC
MIDNIGHT_0509 = 1462752000.0  # 2016-05-09 00:00:00 UTC
MIDNIGHT_0510 = 1462838400.0  # 2016-05-10 00:00:00 UTC




# --- generic CSV / JSONL -------------------------------------------------------------------------

GOOD_CSV = (
    "item_id,note,user_id,event_type,timestamp,session_id\r\n"  # any column order, extra column ignored
    "i1,x,u1,view,2011-12-09 12:50:00,s1\r\n"
    "i2,x,u1,click,2011-12-09T12:50:00Z,\r\n"
    "i3,x,u2,add_to_cart,2011-12-09T12:50:00+02:00,s2\r\n"
    "i4,x,u2,purchase,1323435000,s2\r\n"
    "i5,x,u3,view,1323435000.5,s3\r\n"
)
GOOD_EVENTS = [
    Event("u1", "i1", "view", T_1250_UTC, "s1"),
    Event("u1", "i2", "click", T_1250_UTC, None),
    Event("u2", "i3", "add_to_cart", T_1050_UTC, "s2"),
    Event("u2", "i4", "purchase", T_1250_UTC, "s2"),
    Event("u3", "i5", "view", T_1250_UTC + 0.5, "s3"),
]


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
def test_csv_parses_iso_and_unix_timestamps_and_optional_session(tmp_path, name):
    report = read_events_file(write(tmp_path / name, GOOD_CSV))
    assert report == ReadReport(events=GOOD_EVENTS, bad_rows=[], skipped={})


@pytest.fixture
def local_tz_not_utc(monkeypatch):
    """Run under a local zone 5 hours off UTC, so a naive time read as local time shows up."""
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_naive_iso_times_are_utc_whatever_the_local_zone(tmp_path, local_tz_not_utc):
    path = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\nu1,i1,view,2011-12-09 12:50:00\n")
    assert read_events_file(path).events == [Event("u1", "i1", "view", T_1250_UTC)]
    retail = write(tmp_path / "r.csv", RETAIL_HEADER + "536365,85123A,X,6,2010-12-01 08:26:00,2.55,17850,UK\n")
    assert [e.timestamp for e in read_online_retail(retail).events] == [T_RETAIL]


def test_csv_without_session_column(tmp_path):
    path = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\nu1,i1,view,10\n")
    assert read_events_file(path).events == [Event("u1", "i1", "view", 10.0, None)]


@pytest.mark.parametrize("name", ["events.jsonl", "events.json", "events.jsonl.gz"])
def test_jsonl_parses(tmp_path, name):
    rows = [
        {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": 1323435000, "session_id": "s1"},
        {"user_id": "u1", "item_id": "i2", "event_type": "click", "timestamp": 1323435000.25},
        {"user_id": "u2", "item_id": "i3", "event_type": "purchase", "timestamp": "2011-12-09T12:50:00+02:00",
         "session_id": None, "extra": [1, 2]},
        {"user_id": "u2", "item_id": "i4", "event_type": "view", "timestamp": "2011-12-09 12:50:00", "session_id": ""},
    ]
    report = read_events_file(write(tmp_path / name, "".join(json.dumps(r) + "\n" for r in rows)))
    assert report.bad_rows == []
    assert report.events == [
        Event("u1", "i1", "view", T_1250_UTC, "s1"),
        Event("u1", "i2", "click", T_1250_UTC + 0.25, None),
        Event("u2", "i3", "purchase", T_1050_UTC, None),
        Event("u2", "i4", "view", T_1250_UTC, None),
    ]


def test_csv_bad_rows_are_reported_by_line_and_field_and_good_rows_load(tmp_path, caplog):
    long_id = "x" * 300
    text = (
        "user_id,item_id,event_type,timestamp\n"  # line 1
        "u1,i1,view,1\n"  # 2 good
        "u1,i1,teleport,2\n"  # 3 unknown event_type
        "u1,,view,3\n"  # 4 empty item_id
        f"u1,{long_id},view,4\n"  # 5 300-byte item_id
        "u1,i1,view,yesterday\n"  # 6 non-numeric timestamp
        '"u\n2",i2,view,7\n'  # 7-8 good: a quoted id spanning two lines
        "u1,i1,view\n"  # 9 one column short
        "\n"  # 10 blank: no row
        "u1,i3,view,-5\n"  # 11 negative timestamp
        "u1,i4,purchase,11\n"  # 12 good
    )
    with caplog.at_level(logging.WARNING, logger="covisit.core.datasets"):
        report = read_events_file(write(tmp_path / "e.csv", text))
    assert report.events == [
        Event("u1", "i1", "view", 1.0),
        Event("u\n2", "i2", "view", 7.0),
        Event("u1", "i4", "purchase", 11.0),
    ]
    assert [line for line, _ in report.bad_rows] == [3, 4, 5, 6, 9, 11]
    reasons = dict(report.bad_rows)
    assert reasons[3].startswith("event_type:") and "teleport" in reasons[3]
    assert reasons[4].startswith("item_id:") and "got 0" in reasons[4]
    assert reasons[5].startswith("item_id:") and "got 300" in reasons[5]
    assert reasons[6].startswith("timestamp:") and "yesterday" in reasons[6]
    assert reasons[9] == "expected 4 columns, got 3"
    assert reasons[11].startswith("timestamp:")
    assert "6 bad row(s)" in caplog.text and "3, 4, 5, 6, 9" in caplog.text


def test_jsonl_bad_rows_are_reported_by_line_and_reason(tmp_path):
    good = {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": 5}
    lines = [
        json.dumps(good),  # 1 good
        '{"user_id": "u1", "item_id": ',  # 2 malformed JSON
        "",  # 3 blank: no row
        "[1, 2]",  # 4 not an object
        json.dumps({**good, "item_id": 42}),  # 5 non-string id is not coerced
        json.dumps({k: v for k, v in good.items() if k != "event_type"}),  # 6 missing key
        json.dumps({**good, "timestamp": True}),  # 7 a bool is not a time
        json.dumps({**good, "timestamp": "NaN"}),  # 8 not finite
        json.dumps({**good, "item_id": "i2"}),  # 9 good
    ]
    report = read_events_file(write(tmp_path / "e.jsonl", "\n".join(lines) + "\n"))
    assert report.events == [Event("u1", "i1", "view", 5.0), Event("u1", "i2", "view", 5.0)]
    reasons = dict(report.bad_rows)
    assert list(reasons) == [2, 4, 5, 6, 7, 8]
    assert reasons[2].startswith("invalid JSON")
    assert reasons[4] == "expected a JSON object, got list"
    assert reasons[5] == "item_id: must be a string, got int"
    assert reasons[6] == "event_type: missing"
    assert reasons[7].startswith("timestamp:")
    assert reasons[8].startswith("timestamp:")


def test_invalid_utf8_is_a_bad_row_naming_the_field(tmp_path):
    path = tmp_path / "e.csv"
    path.write_bytes(b"user_id,item_id,event_type,timestamp\nu1,i\xff,view,1\nu1,i2,view,2\n")
    report = read_events_file(path)
    assert report.events == [Event("u1", "i2", "view", 2.0)]
    assert report.bad_rows == [(2, "item_id: is not valid UTF-8")]


def test_custom_event_weights_decide_the_known_types(tmp_path):
    path = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\nu,i,like,1\nu,i,view,2\n")
    report = read_events_file(path, event_weights={"like": 1.0})
    assert report.events == [Event("u", "i", "like", 1.0)]
    assert [line for line, _ in report.bad_rows] == [3]


def test_strict_raises_badrow_at_the_first_bad_line(tmp_path):
    text = "user_id,item_id,event_type,timestamp\nu,i,view,1\nu,i,view,2\nu,i,fly,3\nu,,view,4\n"
    path = write(tmp_path / "e.csv", text)
    with pytest.raises(BadRow) as caught:
        read_events_file(path, strict=True)
    assert caught.value.line == 4
    assert str(caught.value).startswith(f"{path}:4: event_type:")


def test_strict_raises_on_malformed_json(tmp_path):
    good = '{"user_id": "u", "item_id": "i", "event_type": "view", "timestamp": 1}'
    path = write(tmp_path / "e.jsonl", good + "\n{oops\n")
    with pytest.raises(BadRow, match=r":2: invalid JSON"):
        read_events_file(path, strict=True)


def test_strict_reads_a_clean_file(tmp_path):
    assert read_events_file(write(tmp_path / "e.csv", GOOD_CSV), strict=True).events == GOOD_EVENTS


@pytest.mark.parametrize("strict", [False, True])
def test_missing_header_column_raises_naming_it(tmp_path, strict):
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp,session_id\nu,i,1,s\n")
    with pytest.raises(ValueError, match="event_type") as caught:
        read_events_file(path, strict=strict)
    assert not isinstance(caught.value, BadRow)


def test_unsupported_suffix_and_empty_file_raise(tmp_path):
    with pytest.raises(ValueError, match="unsupported"):
        read_events_file(write(tmp_path / "e.txt", "user_id,item_id,event_type,timestamp\n"))
    with pytest.raises(ValueError, match="header"):
        read_events_file(write(tmp_path / "empty.csv", ""))


# --- Online Retail ---------------------------------------------------------------------------------

RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def test_online_retail_preset(tmp_path):
    text = RETAIL_HEADER + (
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"  # 2
        'C536379,D,"Discount, staff",-1,2010-12-01 09:41:00,27.5,14527,United Kingdom\n'  # 3 cancellation
        '536366,22633,"HAND WARMER, UNION JACK",6,2010-12-01 08:28:00,1.85,17850.0,United Kingdom\n'  # 4
        "536414,22139,,-56,2010-12-01 11:52:00,0,,United Kingdom\n"  # 5 guest, quantity < 0 kept
        "536370,POST,POSTAGE,0,2010-12-01 08:45:00,18,12583,France\n"  # 6 non-product code kept
        "C536391,21980,PACK OF 12 RED RETROSPOT TISSUES,-24,2010-12-01 10:24:00,0.29,17548,United Kingdom\n"  # 7
        "536371,22086,PAPER CHAIN KIT,80,2010-13-01 09:00:00,2.55,13748,United Kingdom\n"  # 8 bad month
        "536372,22632,HAND WARMER RED POLKA DOT,6,2010-12-01 09:01:00,1.85\n"  # 9 short row
    )
    report = read_online_retail(write(tmp_path / "retail.csv.gz", text))
    assert report.events == [
        Event("17850", "85123A", "purchase", T_RETAIL, "536365"),
        Event("17850", "22633", "purchase", T_RETAIL + 120, "536366"),
        Event("guest-536414", "22139", "purchase", T_RETAIL + 3 * 3600 + 26 * 60, "536414"),
        Event("12583", "POST", "purchase", T_RETAIL + 19 * 60, "536370"),
    ]
    assert report.skipped == {"cancellation": 2}
    assert [line for line, _ in report.bad_rows] == [8, 9]
    assert report.bad_rows[0][1].startswith("InvoiceDate:")
    assert report.bad_rows[1][1] == "expected 8 columns, got 6"
    with pytest.raises(BadRow, match=r":8: InvoiceDate:"):
        read_online_retail(tmp_path / "retail.csv.gz", strict=True)


def test_online_retail_missing_column_raises(tmp_path):
    path = write(tmp_path / "retail.csv", RETAIL_HEADER.replace("CustomerID", "Customer") + "")
    with pytest.raises(ValueError, match="CustomerID"):
        read_online_retail(path)


def test_bundled_online_retail_file_counts():
    report = read_preset("online-retail", ONLINE_RETAIL)
    assert len(report.events) == 532_621
    assert report.skipped == {"cancellation": 9_288}
    assert report.bad_rows == []
    assert report.events[0] == Event("17850", "85123A", "purchase", T_RETAIL, "536365")
    assert not any(e.user_id.endswith(".0") or e.session_id.startswith("C") for e in report.events)


# --- DIGINETICA ------------------------------------------------------------------------------------

DIGINETICA_TEXT = (
    "session_id;user_id;item_id;timeframe;eventdate\n"  # 1
    "1;NA;81766;526309;2016-05-09\n"  # 2
    "1;NA;31331;1031018;2016-05-09\n"  # 3
    "2;5;32118;0;2016-05-10\n"  # 4
    "3;7;4;soon;2016-05-10\n"  # 5 bad timeframe
    "3;7;4;10;2016-05-32\n"  # 6 bad eventdate
    "4;NA;9;999;2016-05-09\n"  # 7 earlier time after later ones: order is kept
)


def test_diginetica_preset(tmp_path, local_tz_not_utc):
    write(tmp_path / "sample_train-item-views.csv", DIGINETICA_TEXT)
    report = read_diginetica(tmp_path)
    assert report.events == [
        Event("guest-1", "81766", "view", MIDNIGHT_0509 + 526.309, "1"),
        Event("guest-1", "31331", "view", MIDNIGHT_0509 + 1031.018, "1"),
        Event("5", "32118", "view", MIDNIGHT_0510, "2"),
        Event("guest-4", "9", "view", MIDNIGHT_0509 + 0.999, "4"),
    ]
    assert [line for line, _ in report.bad_rows] == [5, 6]
    assert report.bad_rows[0][1].startswith("timeframe:")
    assert report.bad_rows[1][1].startswith("eventdate:")
    assert report.skipped == {}
    assert read_preset("diginetica", tmp_path) == report


def test_diginetica_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_diginetica(tmp_path)


# --- presets ---------------------------------------------------------------------------------------


def test_read_preset_rejects_unknown_names_listing_known_ones(tmp_path):
    with pytest.raises(ValueError) as caught:
        read_preset("movielens", tmp_path)
    assert "movielens" in str(caught.value)
    assert all(name in str(caught.value) for name in PRESETS)
    assert set(PRESETS) == {"online-retail", "diginetica"}
