"""covisit beside what a user would pick for the same job, on the same data in the same run.

Systems (alternatives.py, alternatives_sparse.py):
- covisit: CoVisitModel.update_encoded (both cores) then snapshot(); a request is
  covisit.core.scoring.recommend(snap, context, k), the whole Python call;
- dict-of-dicts: the original design's counter, pure Python, a full sort per request;
- numpy on covisit's snapshot: covisit's fit and its pruned serving rows, each request done in
  NumPy instead of the compiled kernel (what the kernel buys, on identical data);
- numpy and scipy: the same exact counts as arrays, np.argpartition per request;
- implicit CosineRecommender and BM25Recommender: item-item models fitted on the sessions x
  items matrix of the same events, library defaults (K=20 neighbours, fit on all cores).

Every system gets the log already encoded (dense ids, event weights: nobody is timed reading
or interning it), the default ModelConfig, and the same 10-item contexts cut from real sessions,
each a call with string ids in and (id, score) pairs out. Right after each fit, before its
requests are timed or any of its figures reported, the dict-of-dicts, numpy and scipy counts
of sampled rows must equal covisit's exact counts to 1e-6, or the bench stops. BLAS is held to one thread (threadpoolctl), as implicit
asks, though none of these paths calls it.

Prints one JSON object per figure while running, then a Markdown table per dataset (figures
with their ratio alternative / covisit), and writes both to build/bench/alternatives.json and
build/bench/alternatives.md. Every loop is bounded in count and in time. Run: `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tracemalloc
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import implicit
import numba
import numpy as np
import scipy
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
from implicit.utils import ParameterWarning
from threadpoolctl import threadpool_info, threadpool_limits

from alternatives import DictOfDicts, NumpyCounts, NumpyServing, check_counts, sample_rows
from alternatives_sparse import ImplicitItemItem, ScipyCounts
from bench_core import cpu_model  # a sibling script: loadtest/ is this script's sys.path[0]
from covisit.core.config import ModelConfig
from covisit.core.datasets import read_online_retail
from covisit.core.interning import IdMap
from covisit.core.model import CoVisitModel
from covisit.core.scoring import recommend
from covisit.core.synthetic import SyntheticLog, zipf_log

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "loadtest" / "data" / "online_retail.csv.gz"
OUT = ROOT / "build" / "bench"
K = 10
CONTEXT = 10
WARMUP = 50  # untimed requests per system first
# A system's timed requests stop here, whatever their count: the dict-of-dicts takes ~70 ms a
# request on the synthetic log, and the whole bench must stay within ~3 minutes.
QUERY_SECONDS = 30.0
PASSES = 3
UPDATE_EVENTS = 1000  # new events per incremental round (a second of a busy shop)
UPDATE_ROUNDS = 5
OVERLAP_CONTEXTS = 500
CHECKED_ROWS = 300

Recommend = Callable[[list[str], int], list]


def emit(results: list, row: dict) -> None:
    results.append(row)
    print(json.dumps(row), flush=True)


def online_retail(config: ModelConfig) -> tuple[SyntheticLog, list[str]]:
    """The bundled log in time order (as `covisit build` reads it), encoded; a session is an
    invoice, so no sequence splits at gaps, as in update_encoded."""
    events = sorted(read_online_retail(DATA).events, key=lambda e: e.timestamp)
    items, sessions = IdMap(), IdMap()
    log = SyntheticLog(seqs=sessions.intern_all([e.sequence_key() for e in events]),
                       items=items.intern_all([e.item_id for e in events]),
                       weights=np.array([config.event_weights[e.event_type] for e in events]),
                       times=np.array([e.timestamp for e in events]), n_items=len(items))
    return log, items.names()


def session_contexts(log: SyntheticLog, names: list[str], n: int, seed: int) -> list[list[str]]:
    """`n` contexts of CONTEXT consecutive events of one session (log order), from random
    sessions that long."""
    order = np.argsort(log.seqs, kind="stable")
    seqs, items = log.seqs[order], log.items[order]
    bounds = np.flatnonzero(np.r_[True, seqs[1:] != seqs[:-1], True])
    starts, lengths = bounds[:-1], np.diff(bounds)
    long = np.flatnonzero(lengths >= CONTEXT)
    rng = np.random.default_rng(seed)
    picked = rng.choice(long, size=n)
    at = starts[picked] + rng.integers(0, lengths[picked] - CONTEXT + 1)
    return [[names[i] for i in items[a:a + CONTEXT].tolist()] for a in at]


def fit_covisit(log: SyntheticLog, names: list[str], config: ModelConfig):
    """A model and its snapshot, and their figures; kernels are compiled (or loaded from the
    cache) on a few events first, outside the timing."""
    for n in (1000, len(log.items)):
        model = CoVisitModel(config)
        model.items = IdMap(names)
        started = time.perf_counter()
        model.update_encoded(log.seqs[:n], log.items[:n], log.weights[:n], log.times[:n])
        counted = time.perf_counter()
        snap = model.snapshot()
        done = time.perf_counter()
    store = sum(a.nbytes for a in (model.starts, model.ends, model.limits, model.indices,
                                   model.data, model.popularity))
    return model, snap, {"fit_seconds": done - started, "count_seconds": counted - started,
                         "snapshot_seconds": done - counted, "bytes": store + snap.nbytes(),
                         "exact_store_bytes": store, "snapshot_bytes": snap.nbytes(),
                         "exact_links": model.n_links, "serving_links": snap.n_links}


def update_seconds(log: SyntheticLog, names: list[str], config: ModelConfig, seed: int) -> float:
    """How soon covisit serves new events: the median over UPDATE_ROUNDS of folding UPDATE_EVENTS
    new ones (a random stretch of the log, as new sessions) into a fitted model and publishing
    an incremental snapshot, on one thread as the server's learner does. A model of its own, so
    the one the others are checked against stays as fitted; one untimed round first, because
    the first small batch after a batch build moves the counts into pools with room."""
    model, _, _ = fit_covisit(log, names, config)
    model.threads = 1
    rng = np.random.default_rng(seed)
    next_seq, t_end = int(log.seqs.max()) + 1, float(log.times.max())
    seconds = []
    for _ in range(UPDATE_ROUNDS + 1):
        at = int(rng.integers(0, len(log.items) - UPDATE_EVENTS))
        part = slice(at, at + UPDATE_EVENTS)
        seqs = log.seqs[part] - log.seqs[part].min() + next_seq
        times = log.times[part] - log.times[part].min() + t_end
        next_seq, t_end = int(seqs.max()) + 1, float(times.max())
        started = time.perf_counter()
        model.update_encoded(seqs, log.items[part], log.weights[part], times)
        model.snapshot(incremental=True)
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds[1:]))


def timed_fit(fit: Callable, *args) -> float:
    started = time.perf_counter()
    fit(*args)
    return time.perf_counter() - started


def traced_bytes(fit: Callable, *args) -> int:
    """Python memory a fit leaves allocated (tracemalloc), for structures without arrays."""
    tracemalloc.start()
    try:
        fit(*args)
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def query_figures(call: Recommend, contexts: list[list[str]], reference: list[set[str]]) -> dict:
    """Latency percentiles of `call` over the contexts, in order, after WARMUP untimed calls:
    PASSES passes, the figure being the median pass (outside noise on this VM moves one pass's
    p99 by 2x or more), all stopping after QUERY_SECONDS (the dict-of-dicts is timed on a prefix
    of one pass); and how much of covisit's top K (`reference`, for the first contexts) its top K
    shares."""
    for ctx in contexts[:WARMUP]:
        call(ctx, K)
    deadline = time.perf_counter_ns() + int(QUERY_SECONDS * 1e9)
    p50, p99, shared = [], [], []
    for _ in range(PASSES):
        ns = np.empty(len(contexts), dtype=np.int64)
        for r, ctx in enumerate(contexts):
            t0 = time.perf_counter_ns()
            top = call(ctx, K)
            ns[r] = time.perf_counter_ns() - t0
            if not p50 and r < len(reference):
                shared.append(len(reference[r] & {scored[0] for scored in top}) / K)
            if t0 > deadline:
                ns = ns[:r + 1]
                break
        if len(ns) < len(contexts) and p50:
            break  # a pass cut short by the limit counts only when it is the first
        p50.append(float(np.percentile(ns, 50)) / 1e3)
        p99.append(float(np.percentile(ns, 99)) / 1e3)
        requests = len(ns)
    return {"requests": requests, "passes": len(p50), "p50_us": float(np.median(p50)),
            "p99_us": float(np.median(p99)), "p99_us_per_pass": p99, "overlap_at_k": float(np.mean(shared))}


def links_scanned(lengths: np.ndarray, ids: dict[str, int], contexts: list[list[str]]) -> float:
    """Mean links a context's rows hold (`lengths`: row lengths by dense id)."""
    return float(np.mean([lengths[[ids[c] for c in ctx]].sum() for ctx in contexts]))


def bench_dataset(name: str, log: SyntheticLog, names: list[str], config: ModelConfig,
                  n_requests: int, seed: int, results: list) -> tuple[dict, list[dict]]:
    """The dataset's figures, then each system's (covisit first)."""
    contexts = session_contexts(log, names, n_requests, seed)
    ids = {item: i for i, item in enumerate(names)}
    n_events = len(log.items)
    info = {"bench": "dataset", "dataset": name, "events": n_events, "items": len(names),
            "sessions": int(log.seqs.max()) + 1, "requests": n_requests,
            "context_items": CONTEXT, "k": K, "config": config.to_dict()}
    emit(results, info)
    model, snap, fit = fit_covisit(log, names, config)
    reference = [{r.item_id for r in recommend(snap, ctx, K)} for ctx in contexts[:OVERLAP_CONTEXTS]]
    exact = model.csr()
    checked = sample_rows(exact[0], CHECKED_ROWS, seed)
    rows = []

    def report(system: str, fit: dict, call: Recommend, lengths: np.ndarray, **extra) -> None:
        # Only covisit folds new events in; the others serve them after a refit of the whole log.
        row = {"bench": "alternatives", "dataset": name, "system": system, "events": n_events,
               "update_seconds": fit["fit_seconds"], **fit, "events_per_s": n_events / fit["fit_seconds"],
               **query_figures(call, contexts, reference),
               "links_per_context": links_scanned(lengths, ids, contexts), **extra}
        rows.append(row)
        emit(results, row)

    fit["update_seconds"] = update_seconds(log, names, config, seed)
    report("covisit", fit, partial(recommend, snap), snap.ends - snap.starts)
    serving = NumpyServing(snap)
    report("numpy on covisit's snapshot", fit, serving.recommend, snap.ends - snap.starts,
           shared_with_covisit=["fit_seconds", "events_per_s", "update_seconds", "bytes"])
    del model, snap, serving

    dod = DictOfDicts(config, names)
    seqs, items, weights = log.seqs.tolist(), [names[i] for i in log.items.tolist()], log.weights.tolist()
    fit_seconds = timed_fit(dod.fit, seqs, items, weights)
    check_counts("dict-of-dicts", exact, dod.row, checked)
    lengths = np.array([len(dod.counts.get(item, ())) for item in names])
    traced = DictOfDicts(config, names)  # made outside the trace: its id map is no count
    dod_bytes = traced_bytes(traced.fit, seqs, items, weights)
    del traced
    report("dict-of-dicts (original design)", {"fit_seconds": fit_seconds, "bytes": dod_bytes},
           dod.recommend, lengths, memory="tracemalloc: what the fit leaves allocated")
    del dod, seqs, items, weights

    for system, kind in (("numpy", NumpyCounts), ("scipy.sparse", ScipyCounts)):
        counts = kind(config, names)
        fit_seconds = timed_fit(counts.fit, log)
        check_counts(system, exact, counts.row, checked)
        report(system, {"fit_seconds": fit_seconds, "bytes": counts.nbytes()}, counts.recommend,
               np.diff(counts.indptr))
        del counts
    del exact

    for kind in (CosineRecommender, BM25Recommender):
        recommender = kind()
        item_item = ImplicitItemItem(recommender, config, names)
        with warnings.catch_warnings():
            # implicit's own Cosine and BM25 fits hand its kNN a COO matrix and warn about it
            warnings.simplefilter("ignore", ParameterWarning)
            fit_seconds = timed_fit(item_item.fit, log)
        report(f"implicit {kind.__name__}", {"fit_seconds": fit_seconds, "bytes": item_item.nbytes()},
               item_item.recommend, np.diff(recommender.similarity.indptr),
               params={"K": recommender.K, "num_threads": recommender.num_threads,
                       **({"K1": recommender.K1, "B": recommender.B}
                          if isinstance(recommender, BM25Recommender) else {})})
        del item_item, recommender
    return info, rows


def ratio_text(value: float, base: float, lower_is_better: bool, worse: str, better: str) -> str:
    """`value` / `base` in words: '12.3x slower', or '0.45x: 2.2x faster'."""
    r = value / base
    verdict = worse if (r >= 1) == lower_is_better else better
    return f"{_times(r)}x {verdict}" if r >= 1 else f"{r:.2g}x: {_times(1 / r)}x {verdict}"


def _times(r: float) -> str:
    return f"{r:.3g}" if r < 1000 else f"{r:,.0f}"


COLUMNS = [
    # header, key, format, lower is better, worse, better
    ("fit s", "fit_seconds", "{:.3g}", True, "slower", "faster"),
    ("fit events/s", "events_per_s", "{:,.0f}", False, "slower", "faster"),
    (f"{UPDATE_EVENTS:,} new events served after s", "update_seconds", "{:.3g}", True, "later", "sooner"),
    ("p50 us", "p50_us", "{:,.1f}", True, "slower", "faster"),
    ("p99 us", "p99_us", "{:,.1f}", True, "slower", "faster"),
    ("memory MB", "bytes", "{:.3g}", True, "larger", "smaller"),
]


def markdown(machine: dict, datasets: list[tuple[dict, list[dict]]]) -> str:
    lines = [
        "# covisit beside the alternatives",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores. Python {machine['python']}, "
        f"numpy {machine['numpy']}, numba {machine['numba']}, scipy {machine['scipy']}, "
        f"implicit {machine['implicit']}. Fits: covisit and implicit on all cores (numba, OpenMP), "
        "the others on one; BLAS held to one thread.",
        "",
        "Each cell is the figure and its ratio alternative / covisit. Seconds, microseconds and "
        "MB: lower is better, so \"12.3x slower\" means 12.3 times covisit's. Events/s: higher "
        "is better. Latency: the whole Python call per 10-item context (string ids in, top 10 "
        "out). Overlap: the share of covisit's top 10 that the system's top 10 holds.",
    ]
    for info, rows in datasets:
        base, cfg = rows[0], info["config"]
        lines += ["", f"## {info['dataset']}: {info['events']:,} events, {info['items']:,} items, "
                      f"{info['sessions']:,} sessions; {base['requests']:,} requests", "",
                  f"Default ModelConfig: window {cfg['window']}, backward {cfg['backward']}, "
                  f"distance {cfg['distance']}, similarity {cfg['similarity']}, top_n "
                  f"{cfg['top_n']}, recency {cfg['recency']}.", "",
                  "| system | " + " | ".join(c[0] for c in COLUMNS) + " | links / context | overlap@10 |",
                  "|---" * (len(COLUMNS) + 3) + "|"]
        for row in rows:
            cells = []
            for _, key, fmt, lower, worse, better in COLUMNS:
                value = row[key] / 1e6 if key == "bytes" else row[key]
                text = fmt.format(value)
                if key in row.get("shared_with_covisit", ()):
                    text += " (covisit's)"
                elif row is not base:
                    text += " (" + ratio_text(row[key], base[key], lower, worse, better) + ")"
                cells.append(text)
            cells += [f"{row['links_per_context']:,.0f}", f"{row['overlap_at_k']:.2f}"]
            lines.append(f"| {row['system']} | " + " | ".join(cells) + " |")
        short = [f"{r['system']} {r['requests']:,}" for r in rows if r["requests"] < base["requests"]]
        lines += ["", f"covisit: fit = count {base['count_seconds']:.3g} s + snapshot "
                      f"{base['snapshot_seconds']:.3g} s; memory = exact store "
                      f"{base['exact_store_bytes'] / 1e6:.1f} MB (float64 counts, what updates "
                      f"need) + serving snapshot {base['snapshot_bytes'] / 1e6:.1f} MB (rows pruned "
                      f"to top_n, which is what it scans). numpy on covisit's snapshot: covisit's fit "
                      "and memory, its pruned rows scanned in NumPy. numpy, scipy and dict-of-dicts scan "
                      "the whole exact rows; implicit its K=20 neighbours per item (float64). "
                      "dict-of-dicts memory: what its fit leaves allocated (tracemalloc). New events: "
                      f"covisit folds {UPDATE_EVENTS:,} into its counts and publishes an incremental "
                      f"snapshot (median of {UPDATE_ROUNDS} rounds, one thread); the others have "
                      "no incremental update, so they serve new events after a refit (their fit time)."]
        if short:
            lines.append(f"Requests timed before the {QUERY_SECONDS:.0f} s limit (a prefix of the "
                         f"same contexts): {', '.join(short)}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000, help="synthetic log events")
    parser.add_argument("--items", type=int, default=200_000, help="synthetic log items")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per system")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    started = time.perf_counter()
    config = ModelConfig()
    machine = {"bench": "machine", "cpu": cpu_model(), "cores": os.cpu_count(),
               "python": platform.python_version(), "numpy": np.__version__,
               "numba": numba.__version__, "scipy": scipy.__version__,
               "implicit": implicit.__version__, "numba_threads": numba.config.NUMBA_NUM_THREADS}
    results: list[dict] = []
    tables = []
    with threadpool_limits(limits=1, user_api="blas"):
        machine["threadpools"] = threadpool_info()
        emit(results, machine)
        log, names = online_retail(config)
        tables.append(bench_dataset("online-retail", log, names, config, args.requests, args.seed,
                                    results))
        log = zipf_log(args.events, args.items, seed=args.seed)
        names = [str(i) for i in range(args.items)]
        tables.append(bench_dataset(f"synthetic Zipf (seed {args.seed})", log, names, config,
                                    args.requests, args.seed, results))
        del log, names
    emit(results, {"bench": "wall", "seconds": time.perf_counter() - started})
    table = markdown(machine, tables)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "alternatives.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "alternatives.md").write_text(table)
    print()
    print(table, end="")


if __name__ == "__main__":
    main()
