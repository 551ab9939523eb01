"""The monitor fed by the real engine: real sessions of the bundled online-retail log replayed
as traffic (a click whenever the user's real next item was shown) raise no CTR alert over two
simulated days, against a one-day baseline; a CTR collapse then raises ctr_drop. The engine's
clock is simulated so that days pass in seconds. (Item drift on the same data: test_drift.py.)"""

import random
from collections import defaultdict
from pathlib import Path

import pytest

from covisit.core.config import ModelConfig
from covisit.core.datasets import read_online_retail
from covisit.core.engine import Engine
from covisit.core.events import Event
from covisit.core.drift import CtrDrift
from covisit.core.monitor import HitRate, Monitor
from covisit.server.config import CacheConfig, ExplorationConfig, HistoryConfig, LearningConfig, LimitsConfig

DATA = Path(__file__).resolve().parents[2] / "loadtest" / "data" / "online_retail.csv.gz"
START = 1_700_000_000.0
HOURS = 2 * 24  # the replay: the one-day CTR baseline fills, then a day of checks


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def sessions() -> tuple[list[Event], list[list[str]]]:
    """The log's first 30,000 events (to learn) and its later invoices of 3+ items (their first
    30), shuffled (stationary traffic)."""
    events = sorted(read_online_retail(DATA).events, key=lambda e: e.timestamp)
    by_invoice: dict[str, list[str]] = defaultdict(list)
    for ev in events[30_000:]:
        if not by_invoice[ev.session_id] or by_invoice[ev.session_id][-1] != ev.item_id:
            by_invoice[ev.session_id].append(ev.item_id)
    later = [items[:30] for items in by_invoice.values() if len(items) >= 3]
    random.Random(0).shuffle(later)
    return events[:30_000], later


def engine_on(learned: list[Event], clock: Clock) -> Engine:
    monitor = Monitor(ctr_drift=CtrDrift(window_seconds=3600, baseline_seconds=86400, clock=clock), clock=clock)
    engine = Engine(ModelConfig(), limits=LimitsConfig(max_future_seconds=1e9), cache=CacheConfig(enabled=False),
                    history=HistoryConfig(), exploration=ExplorationConfig(rate=0.0), learning=LearningConfig(),
                    clock=clock, monitor=monitor)
    engine.load(learned)
    return engine


def play(engine: Engine, clock: Clock, session: list[str], n: int, seconds: float, clicks: bool = True) -> None:
    """One shopper walks `session`: a recommendation at each step, its impressions, a click
    when the next real item was shown (none if not `clicks`), and the events' items."""
    user = f"shopper-{n}"
    for step, item in enumerate(session[:-1]):
        rec = engine.recommend(user_id=user, context_items=session[max(0, step - 9):step + 1], k=10)
        shown = [s.item_id for s in rec.items]
        engine.record_impressions(rec.request_id, user, shown)
        if clicks and session[step + 1] in shown:
            engine.record_click(rec.request_id, user, session[step + 1])
    # the events go to the monitor as RecordEvents hands them over (the server test covers that
    # path); the model need not learn them, which keeps the test quick without compiled kernels
    engine.monitor.events([Event(user, item, "view", clock.now, f"s-{n}") for item in session])
    clock.now += seconds


def test_replayed_real_traffic_is_quiet_until_ctr_collapses(sessions):
    learned, later = sessions
    clock = Clock()
    engine = engine_on(learned, clock)
    try:
        spacing = HOURS * 3600 / 2500  # 2,500 sessions over the replay: ~4,000 impressions an hour
        alerts = []
        for n, session in enumerate(later[:2500]):
            play(engine, clock, session, n, spacing)
            if n % 25 == 24:
                alerts.append(engine.monitor.ctr_drift.check())
        recent, baseline, recent_n, baseline_n = engine.monitor.ctr_drift.figures()
        # the checks really ran: both windows had enough impressions, and real clicks
        assert recent_n >= 1000 and baseline_n >= 50_000 and 0.01 < baseline < 0.5
        assert not any(alerts), [a for a in alerts if a]

        # a CTR collapse: an hour and a half of the same traffic without clicks
        for n, session in enumerate(later[2500:2560], start=2500):
            play(engine, clock, session, n, 90.0, clicks=False)
        assert "ctr_drop" in engine.monitor.drift_alerts()
    finally:
        engine.close()


def test_hit_rate_counts_requests_shown_then_clicked_in_its_window():
    hits = HitRate(size=2)
    hits.clicked("never-shown")  # no effect: it was not shown
    hits.shown("a"), hits.shown("b")
    hits.clicked("a"), hits.clicked("a")  # a second click on a request is no second hit
    assert hits.figures() == (2, 1) and hits.rate == 0.5
    hits.shown("c")  # "a" leaves the window, with its hit
    assert hits.figures() == (2, 0)


def test_feedback_per_line_and_arm_keeps_the_newest_lines():
    monitor = Monitor()
    monitor.MAX_LINES = 2
    for line in (1, 2, 3):
        monitor.shown(f"r{line}", line, "serving", ["a", "b"])
    monitor.shown("ab", 3, "ab", ["c"])
    monitor.clicked("r3", 3, "serving", "a")
    assert monitor.feedback() == [(3, "serving", 2, 1), (3, "ab", 1, 0), (2, "serving", 2, 0)]
