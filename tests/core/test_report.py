"""The offline report over a prediction log written by PredictionLog from known traffic."""

import json
import math

import pytest

from covisit.core import kernels_topk as kt
from covisit.core.prediction_log import PredictionLog, log_files
from covisit.core.report import format_report, read_log, report

C, T, P, E = kt.SOURCE_COOCCURRENCE, kt.SOURCE_CONTENT, kt.SOURCE_POPULARITY, kt.SOURCE_EXPLORATION


@pytest.fixture
def traffic(tmp_path):
    """Version 1 (serving): 5 responses of 2 items, all shown (10 impressions), r1 and r2 clicked
    once each. Version 2 (A/B): 2 responses of 3 items, only s1 shown and clicked. A request
    whose response is not in the log: 4 impressions and a click."""
    log = PredictionLog(tmp_path, max_file_bytes=400, clock=lambda: 1.0)  # several files
    for i in range(1, 6):
        items = [("a", C), ("b", C)] if i <= 3 else [("a", C), ("c", P)]
        log.response(f"r{i}", "u", ["a"], items, 1, "serving")
        log.impression(f"r{i}", [item for item, _ in items])
    log.click("r1", "a")
    log.click("r2", "b")
    for rid in ("s1", "s2"):
        log.response(rid, "v", [], [("d", E), ("a", T), ("e", C)], 2, "ab")
    log.impression("s1", ["d", "a", "e"])
    log.click("s1", "e")
    log.impression("ghost", ["a", "b", "f", "g"])
    log.click("ghost", "f")
    log.close()
    assert log.written == 18 and len(log_files(tmp_path)) > 1
    return tmp_path


def gini_by_definition(counts, n):
    x = list(counts) + [0] * (n - len(counts))
    mean = sum(x) / n
    return sum(abs(a - b) for a in x for b in x) / (2 * n * n * mean)


def test_figures_overall_and_per_version(traffic):
    rep = report(traffic, catalog_size=10)
    assert (rep["records"], rep["torn_lines"], rep["coverage_basis"], rep["catalog_size"]) == (18, 0, "catalog", 10)
    assert (rep["unmatched_impressions"], rep["unmatched_clicks"]) == (4, 1)

    v1, v2 = rep["groups"]
    assert (v1["version"], v1["arm"], v1["responses"], v1["impressions"], v1["clicks"]) == (1, "serving", 5, 10, 2)
    assert v1["ctr"] == pytest.approx(0.2) and v1["hit_rate"] == pytest.approx(2 / 5)
    assert (v1["slots"], v1["distinct_items"], v1["coverage"]) == (10, 3, 0.3)  # a 5, b 3, c 2
    assert v1["gini"] == pytest.approx(gini_by_definition([5, 3, 2], 10))
    assert v1["source_shares"] == {"COOCCURRENCE": 0.8, "CONTENT": 0.0, "POPULARITY": 0.2, "EXPLORATION": 0.0}

    assert (v2["version"], v2["arm"], v2["responses"], v2["impressions"], v2["clicks"]) == (2, "ab", 2, 3, 1)
    assert v2["ctr"] == pytest.approx(1 / 3) and v2["hit_rate"] == 1.0  # s2 was never shown
    assert v2["entropy_bits"] == pytest.approx(math.log2(3))  # d, a, e twice each

    overall = rep["overall"]
    assert (overall["responses"], overall["impressions"], overall["clicks"]) == (7, 13, 3)
    assert overall["ctr"] == pytest.approx(3 / 13) and overall["hit_rate"] == pytest.approx(3 / 6)
    assert (overall["slots"], overall["distinct_items"], overall["coverage"]) == (16, 5, 0.5)
    # exposures a 7, b 3, c 2, d 2, e 2 and five zeros: sorted form 2 * 139 / (10 * 16) - 11/10
    assert overall["gini"] == pytest.approx(0.6375) == gini_by_definition([7, 3, 2, 2, 2], 10)
    p = [7 / 16, 3 / 16, 2 / 16, 2 / 16, 2 / 16]
    assert overall["entropy_bits"] == pytest.approx(-sum(x * math.log2(x) for x in p))
    assert overall["source_shares"] == {"COOCCURRENCE": 10 / 16, "CONTENT": 2 / 16, "POPULARITY": 2 / 16,
                                        "EXPLORATION": 2 / 16}


def test_without_a_catalog_size_coverage_is_over_the_items_seen(traffic):
    rep = report(traffic)
    assert (rep["coverage_basis"], rep["catalog_size"]) == ("items seen in the log", 7)  # a..e, f, g
    assert rep["overall"]["coverage"] == pytest.approx(5 / 7)
    assert rep["overall"]["gini"] == pytest.approx(gini_by_definition([7, 3, 2, 2, 2], 7))
    text = format_report(rep)
    assert "distinct items recommended / 7 distinct items seen in the log (no catalog size given)" in text


def test_the_table_has_a_row_per_version_and_arm(traffic):
    text = format_report(report(traffic, catalog_size=10))
    assert "distinct items recommended / catalog size 10;" in text and "4 impressions, 1 clicks" in text
    header, v1, v2, overall = text.splitlines()[-4:]
    assert header.split()[:4] == ["version", "arm", "responses", "impressions"]
    assert v1.split()[:6] == ["1", "serving", "5", "10", "2", "0.2000"]
    assert v2.split()[:6] == ["2", "ab", "2", "3", "1", "0.3333"]
    assert overall.split()[:5] == ["all", "7", "13", "3", "0.2308"]
    assert v1.split()[-4:] == ["80.0%", "0.0%", "20.0%", "0.0%"]


def test_a_torn_last_line_is_skipped_and_counted(traffic):
    last = log_files(traffic)[-1]
    with open(last, "a", encoding="utf-8") as f:
        f.write('{"type": "click", "request_id": "r3", "item_')  # a crash in mid-write
    records = read_log(traffic)
    assert [r["request_id"] for r in records][:2] == ["r1", "r1"] and records.torn == 1
    rep = report(traffic, catalog_size=10)
    assert (rep["records"], rep["torn_lines"], rep["overall"]["clicks"]) == (18, 1, 3)


def test_a_broken_line_inside_a_file_is_an_error(tmp_path):
    (tmp_path / "predictions-00000000.jsonl").write_text(
        json.dumps({"type": "click", "request_id": "r", "item_id": "a"}) + "\nnot json\n{}\n")
    with pytest.raises(ValueError, match=r"predictions-00000000.jsonl:2: not a JSON line"):
        list(read_log(tmp_path))


def test_an_empty_log(tmp_path):
    rep = report(tmp_path)
    assert (rep["files"], rep["records"], rep["groups"]) == (0, 0, [])
    assert rep["overall"]["ctr"] == 0.0 and rep["overall"]["coverage"] == 0.0
    assert format_report(rep).splitlines()[-1].split()[:2] == ["all", "0"]
