"""The `covisit` command: serve, and offline build, recommend and evaluate."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from tqdm import tqdm

from covisit.core.config import DISTANCE_MODES, SIMILARITIES, ModelConfig
from covisit.core.datasets import PRESETS, BadRow, ReadReport, read_events_file, read_preset
from covisit.core.evaluation import CUTOFFS, clean, evaluate, sessions_from_events, temporal_split
from covisit.core.model import CoVisitModel
from covisit.core.scoring import SOURCE_NAMES, recommend
from covisit.core.snapshot import Snapshot, SnapshotError

log = logging.getLogger("covisit")
PRESET_TEST_DAYS = {"online-retail": 30.0, "diginetica": 7.0}
BUILD_BATCH = 100_000


def _add_data_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS), help="a known public dataset (use with --data)")
    src.add_argument("--events", metavar="FILE", help="CSV or JSONL events file (user_id,item_id,event_type,timestamp[,session_id])")
    p.add_argument("--data", metavar="PATH", help="the preset's file or folder")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of reporting it")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    d = ModelConfig()
    g = p.add_argument_group("model")
    g.add_argument("--window", type=int, default=d.window, help="link items up to W events apart (default %(default)s)")
    g.add_argument("--backward", type=float, default=d.backward, help="weight of reverse links; 1 = symmetric (default %(default)s)")
    g.add_argument("--distance", choices=sorted(DISTANCE_MODES), default=d.distance, help="distance weighting (default %(default)s)")
    g.add_argument("--half-life", type=float, default=d.half_life, help="time-decay half-life in seconds, 0 = off (default %(default)s)")
    g.add_argument("--similarity", choices=sorted(SIMILARITIES), default=d.similarity, help="link score (default %(default)s)")
    g.add_argument("--top-n", type=int, default=d.top_n, help="neighbours kept per item (default %(default)s)")
    g.add_argument("--recency", type=float, default=d.recency, help="weight ratio between consecutive context items (default %(default)s)")
    g.add_argument("--max-context", type=int, default=d.max_context, help="newest context items used (default %(default)s)")
    g.add_argument("--exclude-context", action=argparse.BooleanOptionalAction, default=d.exclude_context,
                   help="leave context items out of results (default %(default)s)")
    g.add_argument("--session-gap", type=float, default=d.session_gap, help="inactivity in seconds that ends a user's session (default %(default)s)")


def _model_config(args: argparse.Namespace) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)} - {"event_weights"}
    return ModelConfig(**{n: getattr(args, n) for n in names})


def _read(args: argparse.Namespace) -> ReadReport:
    if args.preset:
        if not args.data:
            raise SystemExit(f"--preset {args.preset} needs --data PATH")
        report = read_preset(args.preset, args.data, strict=args.strict)
    else:
        report = read_events_file(args.events, strict=args.strict)
    if report.bad_rows:
        lines = ", ".join(str(line) for line, _ in report.bad_rows[:10])
        print(f"warning: {len(report.bad_rows)} bad rows left out (lines {lines}"
              f"{', ...' if len(report.bad_rows) > 10 else ''}); first: {report.bad_rows[0][1]}",
              file=sys.stderr)
    skipped = ", ".join(f"{n} {reason}" for reason, n in report.skipped.items())
    log.info("read %d events%s", len(report.events), f" (skipped {skipped})" if skipped else "")
    return report


def cmd_build(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    model = CoVisitModel(_model_config(args))  # a bad setting fails before the read
    events = sorted(_read(args).events, key=lambda e: e.timestamp)
    for lo in tqdm(range(0, len(events), BUILD_BATCH), desc="build", unit="batch", disable=args.quiet):
        model.update(events[lo: lo + BUILD_BATCH])
    snap = model.snapshot(version=1)
    snap.save(args.out)
    print(f"built {args.out}: {model.n_events} events, {snap.n_items} items, {snap.n_links} links "
          f"in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    snap = Snapshot.load(args.model)
    unknown = [i for i in args.item if i not in snap.items]
    if unknown:
        print(f"note: unknown to the model, ignored: {', '.join(unknown)}", file=sys.stderr)
    for rec in recommend(snap, args.item, args.k):
        print(f"{rec.item_id}\t{rec.score:.6g}\t{SOURCE_NAMES[rec.source]}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    config = _model_config(args)
    test_days = args.test_days
    if test_days is None and args.test_fraction is None:
        if not args.preset:
            raise SystemExit("--events needs --test-days N or --test-fraction F")
        test_days = PRESET_TEST_DAYS[args.preset]
    sessions = clean(sessions_from_events(_read(args).events, config.session_gap), args.min_support)
    split = temporal_split(sessions, test_days=test_days, test_fraction=args.test_fraction)
    result = evaluate(split, config, progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result))
    return 0


def format_report(result: dict) -> str:
    s = result["split"]
    lines = [f"split: {s['train_sessions']} train sessions, {s['test_sessions']} test sessions, "
             f"{s['test_predictions']} test predictions, {s['items']} items", ""]
    names = [f"{m}@{k}" for k in CUTOFFS for m in ("HR", "MRR", "NDCG", "P", "COV", "Gini")]
    lines.append(f"{'model':<10}" + "".join(f"{n:>9}" for n in names))
    for model, values in result["models"].items():
        lines.append(f"{model:<10}" + "".join(f"{values[n]:>9.4f}" for n in names))
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    from covisit.server.app import serve
    from covisit.server.config import load_config

    flags = {"server.host": args.host, "server.port": args.port, "server.data": args.data,
             "server.preset": args.preset, "server.data_dir": args.data_dir, "server.catalog": args.catalog,
             "server.tls_cert": args.tls_cert, "server.tls_key": args.tls_key,
             "server.tls_client_ca": args.tls_client_ca,
             "server.insecure_admin": True if args.insecure_admin else None}
    config = load_config(args.config, os.environ, {k: v for k, v in flags.items() if v is not None})
    serve(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covisit", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build a snapshot directory from an events file")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="snapshot directory to write")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("recommend", help="recommend from a saved snapshot")
    p.add_argument("--model", required=True, metavar="DIR", help="snapshot directory")
    p.add_argument("--item", required=True, action="append", metavar="ID",
                   help="context item; repeat for a longer context, newest last")
    p.add_argument("-k", type=int, default=10, help="how many items (default %(default)s)")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("serve", help="run the gRPC server (settings: defaults < --config TOML < COVISIT_* env < flags)")
    p.add_argument("--config", metavar="FILE", help="TOML settings file")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 50051; 0 picks a free one)")
    p.add_argument("--preset", help="the events file's preset (online-retail, diginetica; '' for a generic file)")
    p.add_argument("--data", metavar="PATH", help="events to build the first model from")
    p.add_argument("--data-dir", metavar="DIR", help="where the server keeps its model")
    p.add_argument("--catalog", metavar="CSV", help="items to load at start (item_id,categories,available,tags)")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (with --tls-key: serve TLS)")
    p.add_argument("--tls-key", metavar="PEM", help="server private key")
    p.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--insecure-admin", action="store_true",
                   help="allow admin calls without a token (loopback hosts only)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="offline next-item evaluation (session-rec protocol)")
    _add_data_args(p)
    _add_model_args(p)
    split = p.add_mutually_exclusive_group()
    split.add_argument("--test-days", type=float, help="test = sessions starting in the last N days "
                       "(presets: online-retail 30, diginetica 7)")
    split.add_argument("--test-fraction", type=float, help="test = sessions starting in the last fraction F of the time span")
    p.add_argument("--min-support", type=int, default=5, help="drop items seen fewer times (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (BadRow, SnapshotError, ValueError, OSError) as exc:
        print(f"covisit {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
