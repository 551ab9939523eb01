"""Locust load test over gRPC: shoppers replay real sessions of the bundled online-retail log.

Each simulated shopper takes a real invoice (its items in order) and walks it as a new session:
at every step RecommendItems with the items so far (the newest 10) as context, RecordEvents for
the item, RecordImpressions for the items shown, and RecordClicks when the invoice's real next
item was among them, so the CTR the server sees follows real behaviour. Every call goes through
a client interceptor that reports it to Locust (the gRPC status decides success or failure).

Calls block (gRPC's gevent mode is not used): under it, at a light load, a call's median was
many times a blocking call's, so its figures were the client's, not the server's.
A blocking call holds its Locust process, so each process has one call in flight; run several
(`--processes`, which make loadtest sets) for concurrent calls.

Run it with `make loadtest` (which starts a server on 127.0.0.1 unless TARGET is given), or
directly: `locust -f loadtest/locustfile.py --host 127.0.0.1:50051`. Options (after the Locust
ones): --think-ms (pause between steps, default 0), --step-rate (steps per second per shopper,
paced on a clock; 0 = no pacing), --k (items per request, default 10),
--no-events (skip RecordEvents), --no-feedback (skip impressions and clicks),
--max-steps (steps per session, default 20).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import grpc
from locust import User, events, task

from covisit.client import CovisitClient, Event
from covisit.core.datasets import read_online_retail
from covisit.server.app import is_loopback


DATA = Path(__file__).resolve().parent / "data" / "online_retail.csv.gz"
_shoppers = itertools.count()


def read_sessions(path: Path) -> list[list[str]]:
    """The log's invoices of two or more items, each item once in a row."""
    by_invoice: dict[str, list[str]] = defaultdict(list)
    for ev in read_online_retail(path).events:
        items = by_invoice[ev.session_id]
        if not items or items[-1] != ev.item_id:
            items.append(ev.item_id)
    return [items for items in by_invoice.values() if len(items) >= 2]


# Read on import, which Locust does before it forks its --processes: they share one copy.
SESSIONS = read_sessions(DATA)


@events.init.add_listener
def _only_loopback(environment, **kwargs) -> None:
    host = (environment.host or "").rsplit(":", 1)[0]
    if not is_loopback(host):
        raise SystemExit(f"--host: only loopback addresses may be load-tested, not {environment.host!r}")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--think-ms", type=float, default=0.0, help="pause between a shopper's steps")
    parser.add_argument("--step-rate", type=float, default=0.0,
                        help="steps per second per shopper, paced on a clock (0: as fast as the calls go)")
    parser.add_argument("--k", type=int, default=10, help="items per RecommendItems")
    parser.add_argument("--max-steps", type=int, default=20, help="steps per session at most")
    parser.add_argument("--no-events", action="store_true", help="skip RecordEvents")
    parser.add_argument("--no-feedback", action="store_true", help="skip RecordImpressions and RecordClicks")


class LocustReporter(grpc.UnaryUnaryClientInterceptor):
    """Reports every unary call to Locust: its method, time and size, and the RpcError if any."""

    def __init__(self, environment):
        self.environment = environment

    def intercept_unary_unary(self, continuation, client_call_details, request):
        started = time.perf_counter()
        call = continuation(client_call_details, request)
        error = call.exception()
        self.environment.events.request.fire(
            request_type="grpc", name=client_call_details.method.rsplit("/", 1)[-1],
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0 if error else call.result().ByteSize(), exception=error, context={})
        return call


class Shopper(User):
    """One shopper at a time walks a real session; a failed call ends that session (Locust has
    counted it) and the next one starts."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.think, self.step_rate = options.think_ms / 1000, options.step_rate
        self.next_step = time.monotonic()
        self.k, self.max_steps = options.k, options.max_steps
        self.send_events, self.send_feedback = not options.no_events, not options.no_feedback
        self.rng = random.Random(os.getpid() * 1000 + next(_shoppers))
        self.client = CovisitClient(self.host, timeout=5.0, interceptors=[LocustReporter(self.environment)])

    def on_stop(self) -> None:
        self.client.close()

    @task
    def shop(self) -> None:
        session = self.rng.choice(SESSIONS)[:self.max_steps + 1]
        shopper = f"locust-{os.getpid()}-{next(_shoppers)}"
        try:
            for step, item in enumerate(session[:-1]):
                self.pace()
                self.step(shopper, session, step, item)
                if self.think:
                    time.sleep(self.think)
        except grpc.RpcError:
            pass  # reported by the interceptor

    def pace(self) -> None:
        """With --step-rate, wait for this shopper's next step on the clock (a late step goes at
        once, and the ones after it catch up). Without, still yield: blocking calls never do, and
        the process's other shoppers, its spawner and its reports to the master must get turns."""
        delay = 0.0
        if self.step_rate:
            delay = max(0.0, self.next_step - time.monotonic())
            self.next_step = max(self.next_step, time.monotonic() - 1.0) + 1 / self.step_rate
        time.sleep(delay)  # gevent's, once Locust has patched the standard library

    def step(self, shopper: str, session: list[str], step: int, item: str) -> None:
        rec = self.client.recommend_items(session[max(0, step - 9):step + 1], user_id=shopper, k=self.k)
        if self.send_events:
            self.client.record_events([Event(shopper, item, "view", time.time(), shopper)])
        if self.send_feedback and rec.items:
            shown = [i.item_id for i in rec.items]
            self.client.record_impressions(rec.request_id, shown, user_id=shopper)
            if session[step + 1] in shown:
                self.client.record_clicks(rec.request_id, session[step + 1], user_id=shopper)
