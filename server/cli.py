"""The `covisit` command: serve; offline build, recommend and evaluate; and recommend, record and
admin calls to a running server (--target HOST:PORT)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import grpc
from tqdm import tqdm

from covisit.client import CovisitClient
from covisit.client import Event as ClientEvent
from covisit.core.config import DISTANCE_MODES, SIMILARITIES, ModelConfig
from covisit.core.datasets import PRESETS, BadRow, ReadReport, read_events_file, read_preset
from covisit.core.errors import CovisitError
from covisit.core.evaluation import CUTOFFS, clean, evaluate, sessions_from_events, temporal_split
from covisit.core.model import CoVisitModel
from covisit.core.scoring import SOURCE_NAMES, recommend
from covisit.core.snapshot import Snapshot, SnapshotError
from covisit.server.config import ADMIN_TOKEN_ENV

log = logging.getLogger("covisit")
PRESET_TEST_DAYS = {"online-retail": 30.0, "diginetica": 7.0}
BUILD_BATCH = 100_000
DEFAULT_TIMEOUT = 5.0  # seconds, every remote call
REBUILD_TIMEOUT = 60.0  # admin rebuild and resume, unless --timeout says otherwise


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


def _add_remote_args(p: argparse.ArgumentParser, target_group=None) -> None:
    """--target (in ``target_group`` if given, else required), --timeout and the TLS options."""
    (target_group or p).add_argument("--target", required=target_group is None, metavar="HOST:PORT",
                                     help="a running covisit server")
    g = p.add_argument_group("connection")
    g.add_argument("--timeout", type=float, metavar="SECONDS",
                   help=f"deadline of each call (default {DEFAULT_TIMEOUT:g}; admin rebuild and resume {REBUILD_TIMEOUT:g})")
    g.add_argument("--tls-ca", metavar="PEM", help="root certificates to verify the server with (enables TLS)")
    g.add_argument("--tls-cert", metavar="PEM", help="client certificate chain for mutual TLS (with --tls-key)")
    g.add_argument("--tls-key", metavar="PEM", help="client private key for mutual TLS (with --tls-cert)")


def _client(args: argparse.Namespace, admin_token: str | None = None) -> CovisitClient:
    """The client of a remote subcommand, from --target, --timeout and the TLS options."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    if args.tls_cert and not args.tls_ca:
        raise SystemExit("--tls-cert/--tls-key (mutual TLS) need --tls-ca")

    def pem(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return CovisitClient(args.target, timeout=args.timeout or DEFAULT_TIMEOUT, admin_token=admin_token,
                         root_certificates=pem(args.tls_ca), private_key=pem(args.tls_key),
                         certificate_chain=pem(args.tls_cert))


def _print_fields(result) -> None:
    """A client result as key=value lines: a dict field (status config, a nested result such as
    ab_test) as key.name=value, a list of results as key[0].name=value, a missing one as key=;
    no result (None) prints nothing."""
    for key, value in _flat_fields("", dataclasses.asdict(result) if result is not None else {}):
        print(f"{key}={round(value, 3) if isinstance(value, float) else value}")


def _flat_fields(prefix: str, value):
    """(dotted key, value) pairs of a nested dict / tuple; None and () become ""."""
    if isinstance(value, dict):
        for name, v in value.items():
            yield from _flat_fields(f"{prefix}.{name}" if prefix else name, v)
    elif isinstance(value, (tuple, list)) and value:
        for n, v in enumerate(value):
            yield from _flat_fields(f"{prefix}[{n}]", v)
    else:
        yield prefix, "" if value is None or value == () or value == [] else value


def _model_config(args: argparse.Namespace) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)} - {"event_weights"}
    return ModelConfig(**{n: getattr(args, n) for n in names})


def _read(args: argparse.Namespace) -> ReadReport:
    if args.preset:
        if not args.data:
            raise SystemExit(f"--preset {args.preset} needs --data PATH")
        return _reported(read_preset(args.preset, args.data, strict=args.strict))
    return _reported(read_events_file(args.events, strict=args.strict))


def _reported(report: ReadReport) -> ReadReport:
    """``report``, after warning about its bad rows (by line) and logging what was read."""
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
    if args.target:
        with _client(args) as client:
            rec = client.recommend_items(args.item or (), user_id=args.user or "", k=args.k)
        for item in rec.items:
            print(f"{item.item_id}\t{item.score:.6g}\t{item.source}")
        print(f"model_version={rec.model_version} request_id={rec.request_id}", file=sys.stderr)
        return 0
    if args.user or not args.item:
        raise SystemExit("recommend --model needs --item and takes no --user (a snapshot keeps no users)")
    snap = Snapshot.load(args.model)
    unknown = [i for i in args.item if i not in snap.items]
    if unknown:
        print(f"note: unknown to the model, ignored: {', '.join(unknown)}", file=sys.stderr)
    for rec in recommend(snap, args.item, args.k):
        print(f"{rec.item_id}\t{rec.score:.6g}\t{SOURCE_NAMES[rec.source]}")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise SystemExit("--batch must be at least 1")
    report = _reported(read_events_file(args.file, strict=args.strict))
    events = [ClientEvent(e.user_id, e.item_id, e.event_type, e.timestamp, e.session_id)
              for e in sorted(report.events, key=lambda e: e.timestamp)]  # in time order, as build reads them
    accepted = 0
    with _client(args) as client:
        for lo in tqdm(range(0, len(events), args.batch), desc="record", unit="batch", disable=args.quiet):
            try:
                accepted += client.record_events(events[lo: lo + args.batch])
            except grpc.RpcError:
                print(f"note: {accepted} events were accepted before the batch of events "
                      f"{lo + 1}-{min(lo + args.batch, len(events))} failed", file=sys.stderr)
                raise
    print(f"accepted {accepted} of {len(events)} events")
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    with _client(args, admin_token=args.token or os.environ.get(ADMIN_TOKEN_ENV)) as client:
        match args.action:
            case "status":
                _print_fields(client.get_status())
            case "metrics":
                _print_fields(client.get_metrics())
            case "rollback":
                _print_fields(client.rollback_model(args.version))
            case "resume":
                _print_fields(client.resume_learning(timeout=args.timeout or REBUILD_TIMEOUT))
            case "rebuild":
                _print_fields(client.rebuild_model(timeout=args.timeout or REBUILD_TIMEOUT))
            case "promote":
                _print_fields(client.promote_model(args.version))
            case "shadow-start":
                client.start_shadow(args.version, args.rate)
                _print_fields(client.get_status().shadow)
            case "shadow-stop":
                client.stop_shadow()
            case "ab-start":
                client.start_ab_test(args.version, args.fraction)
                _print_fields(client.get_status().ab_test)
            case "ab-stop":
                client.stop_ab_test()
            case "versions":
                for v in client.list_model_versions():
                    created = datetime.fromtimestamp(v.created_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                    print(v.version, v.state, created, v.items, v.links)
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


def cmd_top(args: argparse.Namespace) -> int:
    from covisit.server.top import run

    with _client(args, admin_token=args.token or os.environ.get(ADMIN_TOKEN_ENV)) as client:
        return run(client, args.interval, args.frames)


def cmd_report(args: argparse.Namespace) -> int:
    from covisit.core.report import format_report, report

    if not Path(args.log).is_dir():
        raise ValueError(f"--log: {args.log} is not a directory")
    rep = report(args.log, catalog_size=args.catalog_size)
    print(json.dumps(rep, indent=2, default=str) if args.json else format_report(rep))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from covisit.server.app import serve
    from covisit.server.config import load_config

    flags = {"server.host": args.host, "server.port": args.port, "server.data": args.data,
             "server.preset": args.preset, "server.data_dir": args.data_dir, "server.catalog": args.catalog,
             "server.tls_cert": args.tls_cert, "server.tls_key": args.tls_key,
             "server.tls_client_ca": args.tls_client_ca,
             "server.insecure_admin": True if args.insecure_admin else None,
             "server.reuse_port": True if args.reuse_port else None,
             "server.event_log": args.event_log, "server.event_log_replicas": args.event_log_replicas,
             "server.replica_name": args.replica_name,
             "monitor.metrics_port": args.metrics_port, "monitor.metrics_enabled": False if args.no_metrics else None}
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

    p = sub.add_parser("recommend", help="recommend from a saved snapshot (--model) or a running server (--target)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="DIR", help="snapshot directory")
    _add_remote_args(p, source)
    p.add_argument("--item", action="append", metavar="ID",
                   help="context item; repeat for a longer context, newest last")
    p.add_argument("--user", metavar="U", help="(--target) the user; with no --item, their history is the context")
    p.add_argument("-k", type=int, default=10, help="how many items (default %(default)s)")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("record", help="send an events file to a running server")
    _add_remote_args(p)
    p.add_argument("--file", required=True, metavar="FILE",
                   help="CSV or JSONL events file, optionally .gz (user_id,item_id,event_type,timestamp[,session_id])")
    p.add_argument("--batch", type=int, default=1000, help="events per call (default %(default)s)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of reporting it")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("admin", help=f"admin calls to a running server (token: --token or {ADMIN_TOKEN_ENV})")
    actions = p.add_subparsers(dest="action", required=True)
    for name, text in [("status", "the serving model and the server's state"),
                       ("versions", "model versions, newest first: version state created_at items links"),
                       ("rollback", "serve a kept model version again and pin it (events are logged, not learned)"),
                       ("resume", "unpin: learn the events logged since the rollback and serve the result"),
                       ("rebuild", "re-prune the whole model into a new version; it serves once the quality gate passes it"),
                       ("promote", "serve a kept version (a candidate, an A/B arm) to everyone, skipping the gate"),
                       ("shadow-start", "score a kept version beside the serving one on a sample of requests"),
                       ("shadow-stop", "stop the shadow version"),
                       ("ab-start", "serve a kept version to a stable share of users"),
                       ("ab-stop", "end the A/B test"),
                       ("metrics", "the server's request, feedback, learning and latency counters")]:
        a = actions.add_parser(name, help=text, description=text)
        if name in ("rollback", "promote", "shadow-start", "ab-start"):
            a.add_argument("version", metavar="VERSION")
        if name == "shadow-start":
            a.add_argument("--rate", type=float, default=0.1,
                           help="share of requests also scored by it, in (0, 1] (default %(default)s)")
        if name == "ab-start":
            a.add_argument("--fraction", type=float, default=0.1,
                           help="share of users it serves, in (0, 1) (default %(default)s)")
        _add_remote_args(a)
        a.add_argument("--token", help=f"admin token (default: ${ADMIN_TOKEN_ENV}, which keeps it out of ps)")
        a.set_defaults(func=cmd_admin)

    p = sub.add_parser("top", help=f"a live view of a running server's key figures (token: --token or {ADMIN_TOKEN_ENV})")
    _add_remote_args(p)
    p.add_argument("--token", help=f"admin token (default: ${ADMIN_TOKEN_ENV})")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default %(default)s)")
    p.add_argument("--frames", type=int, help="stop after this many refreshes (default: until Ctrl-C)")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("report", help="offline CTR, hit rate, coverage, Gini and per-version figures "
                                      "from a server's prediction log")
    p.add_argument("--log", required=True, metavar="DIR",
                   help="the prediction log directory (default on a server: <data_dir>/predictions)")
    p.add_argument("--catalog-size", type=int, metavar="N",
                   help="items in the catalog, for coverage (default: distinct items seen in the log)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_report)

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
    p.add_argument("--event-log", metavar="nats://HOST:PORT[,...]",
                   help="share a JetStream stream with other replicas instead of the local log (the nats extra)")
    p.add_argument("--event-log-replicas", type=int, metavar="N", help="copies of the JetStream stream (default 1)")
    p.add_argument("--replica-name", metavar="NAME",
                   help="this replica's name in the fleet (default: host name and process id)")
    p.add_argument("--reuse-port", action="store_true",
                   help="let other replicas bind the same port (SO_REUSEPORT; the kernel spreads connections)")
    p.add_argument("--metrics-port", type=int, help="Prometheus metrics port (default 9464; 0 picks a free one)")
    p.add_argument("--no-metrics", action="store_true", help="no Prometheus metrics endpoint")
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
    name = " ".join(filter(None, [args.command, getattr(args, "action", None)]))
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        print(f"covisit {name}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except (BadRow, SnapshotError, CovisitError, ValueError, OSError) as exc:
        print(f"covisit {name}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
