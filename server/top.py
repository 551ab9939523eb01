"""`covisit top`: a live terminal view of a running server's key figures (GetStatus and
GetMetrics, refreshed every few seconds), drawn with rich."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from covisit.client import CovisitClient, Metrics, Status


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False, show_edge=False)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(status: Status, metrics: Metrics, rate: float | None) -> Group:
    """One frame; `rate` is RecommendItems per second since the last frame (None on the first)."""
    model = _table("model", "", "")
    model.add_row("serving version", status.model_version + (f" (pinned {status.pinned_version})"
                                                             if status.pinned_version else ""))
    model.add_row("learning", status.learning)
    model.add_row("items / links", f"{status.items:,} / {status.links:,}")
    model.add_row("events logged / pending", f"{status.log_events:,} / {status.events_pending:,}")
    model.add_row("events waiting for", f"{metrics.waiting_seconds:.2f} s")
    model.add_row("publishes / auto-rollbacks", f"{metrics.publishes:,} / {metrics.auto_rollbacks}")

    requests = _table("requests", "", "")
    requests.add_row("RecommendItems", f"{metrics.recommend_requests:,}" + (f" ({rate:,.0f}/s)" if rate is not None else ""))
    requests.add_row("latency p50 / p95 / p99", f"{metrics.latency_p50_ms:.2f} / {metrics.latency_p95_ms:.2f} / "
                                                f"{metrics.latency_p99_ms:.2f} ms")
    hit = metrics.cache_hits / metrics.recommend_requests if metrics.recommend_requests else 0.0
    requests.add_row("cache hit rate", _percent(hit))
    requests.add_row("events accepted / rejected", f"{metrics.events_accepted:,} / {metrics.events_rejected:,}")

    relevance = _table("relevance", "", "")
    relevance.add_row("impressions / clicks", f"{metrics.impressions:,} / {metrics.clicks:,}")
    relevance.add_row("CTR / hit rate", f"{_percent(metrics.ctr)} / {_percent(metrics.hit_rate)}")
    d = metrics.drift
    relevance.add_row("CTR recent / baseline", f"{_percent(d.ctr_recent)} / {_percent(d.ctr_baseline)}")
    relevance.add_row("item drift (JS)", "-" if d.item_divergence is None else f"{d.item_divergence:.3f}")
    e = metrics.exposure
    relevance.add_row("coverage / Gini / entropy", f"{_percent(e.coverage)} / {e.gini:.3f} / {e.entropy_bits:.2f} bits")
    relevance.add_row("slots by source", ", ".join(f"{name.lower()} {_percent(share)}"
                                                   for name, share in e.source_shares.items()))

    arms = _table("CTR by model line and arm", "line", "arm", "impressions", "clicks", "CTR")
    for a in metrics.arms[:6]:
        arms.add_row(a.version, a.arm, f"{a.impressions:,}", f"{a.clicks:,}", _percent(a.ctr))

    slos = _table("SLOs and alerts", "", "value", "target", "")
    for c in status.slos:
        slos.add_row(c.name, f"{c.value:.3g}", f"{c.target:g}", "ok" if c.ok else "[red]MISSED[/red]")
    for alert in status.alerts:
        slos.add_row(f"[red]alert {alert.kind}[/red]", alert.reason, "", "")
    return Group(model, requests, relevance, arms, slos)


def run(client: CovisitClient, interval: float, frames: int | None = None, console: Console | None = None) -> int:
    """Refresh every `interval` seconds, `frames` times (None: until interrupted)."""
    console = console or Console()
    last: tuple[float, int] | None = None
    shown = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while frames is None or shown < frames:
                if shown:
                    time.sleep(interval)
                status, metrics = client.get_status(), client.get_metrics()
                now = time.monotonic()
                rate = (metrics.recommend_requests - last[1]) / (now - last[0]) if last else None
                last = (now, metrics.recommend_requests)
                live.update(render(status, metrics, rate), refresh=True)
                shown += 1
        except KeyboardInterrupt:
            pass
    return 0
