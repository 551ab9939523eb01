"""make cluster-demo end to end on the start of the bundled log (a real 3-node NATS cluster,
three replica processes and a fourth that bootstraps from the object store), and the verdict
that fails it when the replicas' hashes or serving versions disagree."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

from covisit.core.config import ModelConfig
from covisit.core.model import CoVisitModel

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"
sys.path.insert(0, str(LOADTEST))  # cluster_demo imports its sibling scripts as top-level modules
import cluster_demo  # noqa: E402

ROWS = 2000  # invoice lines from the start of the bundled file
LINE = re.compile(r"replica (\S+) model_hash ([0-9a-f]{64}) serving_version (\S+)")


def small_log(path: Path) -> Path:
    """The first ROWS lines of the bundled online-retail file, in its own format."""
    with gzip.open(cluster_demo.DATA, "rt", newline="") as src, gzip.open(path, "wt", newline="") as out:
        out.writelines(islice(src, ROWS + 1))  # and the header
    return path


def processes_under(directory: Path) -> list[str]:
    """Command lines of the live processes that name `directory` (the demo's children would)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and str(directory) in cmdline:
            found.append(cmdline)
    return found


def test_the_demo_prints_one_equal_hash_per_replica_and_stops_everything(tmp_path):
    data, work = small_log(tmp_path / "retail.csv.gz"), tmp_path / "work"
    done = subprocess.run([sys.executable, str(LOADTEST / "cluster_demo.py"), "--data", str(data),
                           "--live-events", "300", "--batch", "40", "--timeout", "60", "--work-dir", str(work)],
                          capture_output=True, text=True, timeout=180, cwd=LOADTEST.parent,
                          env={k: v for k, v in os.environ.items() if not k.startswith("COVISIT_")})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    replicas = [LINE.fullmatch(line) for line in lines[:3]]
    assert all(replicas), lines
    assert [m[1] for m in replicas] == ["r1", "r2", "r3"]
    events = cluster_demo.read_events(data, "online-retail")
    assert len(events) > 1000
    assert lines[4] == (f"stream: {len(events)} events: {len(events) - 300} seeded from retail.csv.gz, "
                        "300 recorded live (RecordEvents round-robin, batches of 40)")
    assert len({m[3] for m in replicas}) == 1  # one serving version (the fleet's line)
    booted = re.fullmatch(r"bootstrap: replica r4 SERVING [\d.]+ s after its start, from checkpoint v(\d+) \(fetched "
                          r"from the object store, (\d+) events\) plus (\d+) events replayed from the stream",
                          lines[3])
    assert booted, lines[3]
    assert int(booted[2]) + int(booted[3]) == len(events) and int(booted[2]) > 0
    assert lines[5].startswith("seconds: data read ") and len(lines) == 6
    # the live batches were acknowledged one after another, so the stream holds the file's events
    # in time order: every replica's counts equal a batch build of them
    batch = CoVisitModel(ModelConfig())
    batch.update(events)
    assert {m[2] for m in replicas} == {batch.digest()}
    assert processes_under(work) == []  # the NATS nodes and the replicas are gone


def test_the_verdict_fails_unless_every_replica_has_the_same_hash(capsys):
    same, other = "a" * 64, "b" * 64
    assert cluster_demo.judge({"r1": same, "r2": same, "r3": same}) == []
    assert cluster_demo.judge({"r1": same, "r2": other, "r3": same}) == [
        f"replicas disagree on the model hash: r1, r3 {same[:12]}; r2 {other[:12]}"]
    assert cluster_demo.judge({"r1": same, "r2": ""}) == ["replica r2 reported no model hash",
                                                         f"replicas disagree on the model hash: r1 {same[:12]}; r2 -"]
    assert cluster_demo.judge({}) == ["no replica reported a model hash"]

    def statuses(*digests, lines="3333"):
        return {f"r{i + 1}": SimpleNamespace(counts_digest=d, model_line=line)
                for i, (d, line) in enumerate(zip(digests, lines))}

    assert cluster_demo.report(statuses(same, same, same, same), "summary") == 0
    assert capsys.readouterr().out == "".join(f"replica r{i} model_hash {same} serving_version 3\n"
                                              for i in (1, 2, 3)) + "summary\n"  # r4 is in the summary
    assert cluster_demo.report(statuses(same, same, same, other), "summary") == 1
    assert "FAIL: replicas disagree on the model hash" in capsys.readouterr().err
    assert cluster_demo.report(statuses(same, same, same, same, lines="3343"), "summary") == 1
    assert "FAIL: replicas disagree on the serving version" in capsys.readouterr().err
