"""The `covisit` command end to end: build, recommend and eval on files written here."""

import csv
import json
import subprocess
import sys

import pytest

from covisit.core.snapshot import Snapshot
from covisit.server.cli import main


@pytest.fixture
def events_csv(tmp_path):
    # 30 sessions walk a -> b -> c -> d; every 5th also visits e; one bad row (line 3).
    path = tmp_path / "events.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event_type", "timestamp", "session_id"])
        w.writerow(["u0", "a", "like", 1, "s0"])
        for s in range(30):
            for step, item in enumerate("abcd" + ("e" if s % 5 == 0 else "")):
                w.writerow([f"u{s}", item, "view", 1000 * s + step, f"s{s}"])
    return path


def test_build_then_recommend(tmp_path, events_csv, capsys):
    out = tmp_path / "model"
    assert main(["-q", "build", "--events", str(events_csv), "--out", str(out)]) == 0
    assert "1 bad rows" in capsys.readouterr().err
    snap = Snapshot.load(out)
    assert snap.watermark == 30 * 4 + 6 and snap.n_items == 5
    assert main(["recommend", "--model", str(out), "--item", "b", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["c", "d"]  # next, then two steps on
    assert lines[0].endswith("COOCCURRENCE")


def test_strict_mode_fails_on_the_bad_row(tmp_path, events_csv, capsys):
    code = main(["-q", "build", "--strict", "--events", str(events_csv), "--out", str(tmp_path / "m")])
    assert code == 2
    assert "events.csv:2: event_type" in capsys.readouterr().err


def test_eval_json_on_a_generic_log(events_csv, capsys):
    assert main(["-q", "eval", "--events", str(events_csv), "--test-fraction", "0.2",
                 "--min-support", "1", "--window", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["split"]) == {"train_sessions", "test_sessions", "test_predictions", "items"}
    assert result["split"]["test_predictions"] > 0
    assert set(result["models"]) == {"covisit", "POP", "LAST-ITEM"}
    assert {"HR@20", "MRR@20", "NDCG@20", "P@20", "COV@20", "Gini@20", "HR@10", "MRR@10"} <= set(
        result["models"]["covisit"])
    assert result["models"]["covisit"]["HR@10"] == 1.0  # the walk is fully predictable


@pytest.mark.parametrize("argv, message", [
    (["eval", "--events", "x.csv"], "--test-days"),
    (["build", "--preset", "online-retail", "--out", "m"], "--data"),
    (["recommend", "--model", "/nonexistent", "--item", "a"], "not a covisit snapshot"),
    (["eval", "--events", "/nonexistent.csv", "--test-days", "1"], "No such file"),
    (["build", "--events", "x.csv", "--out", "m", "--window", "0"], "window"),
])
def test_errors_name_what_is_wrong(argv, message, capsys):
    try:
        code = main(["-q", *argv])
    except SystemExit as exc:
        code, text = exc.code, str(exc.code)
    else:
        text = capsys.readouterr().err
    assert code != 0
    assert message in text


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "covisit.server.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "eval" in done.stdout and "recommend" in done.stdout
