"""A/B arms and shadow scoring of kept model versions beside the serving one.

An A/B arm serves a stable share of users: a user is in the arm when a CRC32 of their id falls
in the first `fraction` of the hash range, the same in every process and after restarts.
A shadow version scores a sampled share of requests on one background thread after the
response is made; when that thread falls behind, samples are dropped (and counted), so the
shadow never slows requests beyond the GIL time its scoring takes.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from covisit.core.errors import FailedPrecondition, InvalidArgument
from covisit.core.snapshot import Snapshot

BUCKETS = 10_000
MAX_QUEUED_SHADOWS = 32  # shadow samples waiting for the scorer before new ones are dropped


def in_arm(user_id: str, fraction: float) -> bool:
    return zlib.crc32(user_id.encode("utf-8")) % BUCKETS < fraction * BUCKETS


class Experiments:
    """`learner` finds kept versions (`learner.find(version)`, `learner.serving`)."""

    def __init__(self, learner, clock=time.time):
        self.learner, self.clock = learner, clock
        self._ab: tuple[Snapshot, float, float] | None = None  # snapshot, fraction, started_at
        self._shadow: tuple[Snapshot, float, float] | None = None
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._random = random.Random()
        self._queued = 0
        self._shadow_stats = {"requests": 0, "dropped": 0, "overlap_sum": 0.0}
        self._latencies: deque[float] = deque(maxlen=10_000)

    def _kept(self, version: int) -> Snapshot:
        snap = self.learner.find(version)
        serving = self.learner.serving
        if serving is not None and snap.version == serving.version:
            raise FailedPrecondition(f"version {version} is the serving version")
        return snap

    # ---- A/B ---------------------------------------------------------------------------------
    def start_ab(self, version: int, fraction: float) -> None:
        if not 0 < fraction < 1:
            raise InvalidArgument("fraction", f"must be in (0, 1), got {fraction!r}")
        snap = self._kept(version)
        with self._lock:
            self._ab = (snap, fraction, self.clock())

    def stop_ab(self) -> None:
        with self._lock:
            self._ab = None

    def arm(self, user_id: str) -> Snapshot | None:
        """The A/B arm's snapshot if `user_id` is in the arm, else None."""
        ab = self._ab
        if ab is None or not user_id or not in_arm(user_id, ab[1]):
            return None
        return ab[0]

    # ---- shadow ------------------------------------------------------------------------------
    def start_shadow(self, version: int, sample_rate: float) -> None:
        if not 0 < sample_rate <= 1:
            raise InvalidArgument("sample_rate", f"must be in (0, 1], got {sample_rate!r}")
        snap = self._kept(version)
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="covisit-shadow")
            self._shadow = (snap, sample_rate, self.clock())
            self._shadow_stats = {"requests": 0, "dropped": 0, "overlap_sum": 0.0}
            self._latencies.clear()

    def stop_shadow(self) -> None:
        with self._lock:
            self._shadow = None

    @property
    def shadowing(self) -> bool:
        return self._shadow is not None

    def maybe_shadow(self, served: list[str], score) -> None:
        """On a sampled share of requests, later: `score(shadow_snapshot)` -> item ids, and
        the share of `served` it also returned."""
        shadow = self._shadow
        if shadow is None or self._random.random() >= shadow[1]:
            return
        with self._lock:
            if self._queued >= MAX_QUEUED_SHADOWS:
                self._shadow_stats["dropped"] += 1
                return
            self._queued += 1
        self._executor.submit(self._run_shadow, shadow[0], served, score)

    def _run_shadow(self, snap: Snapshot, served: list[str], score) -> None:
        try:
            started = time.perf_counter()
            items = score(snap)
            seconds = time.perf_counter() - started
            overlap = len(set(items) & set(served)) / len(served) if served else 1.0
            with self._lock:
                if self._shadow is not None and self._shadow[0] is snap:
                    self._shadow_stats["requests"] += 1
                    self._shadow_stats["overlap_sum"] += overlap
                    self._latencies.append(seconds)
        finally:
            with self._lock:
                self._queued -= 1

    def shadow_stats(self) -> dict | None:
        with self._lock:
            if self._shadow is None:
                return None
            s = self._shadow_stats
            latencies = np.array(self._latencies) * 1e3
        p50, p99 = np.percentile(latencies, [50, 99]) if len(latencies) else (0.0, 0.0)
        return {"version": self._shadow[0].version, "requests": s["requests"], "dropped": s["dropped"],
                "mean_overlap": s["overlap_sum"] / s["requests"] if s["requests"] else 0.0,
                "latency_p50_ms": float(p50), "latency_p99_ms": float(p99)}

    # ---- both --------------------------------------------------------------------------------
    def running(self) -> dict[int, str]:
        """Versions under test -> what they do (their state is SHADOW)."""
        out = {}
        ab, shadow = self._ab, self._shadow
        if ab is not None:
            out[ab[0].version] = f"A/B arm for {ab[1]:.0%} of users"
        if shadow is not None:
            out[shadow[0].version] = f"shadow on {shadow[1]:.0%} of requests"
        return out

    def describe(self, which: str) -> tuple[int, float, float] | None:
        """(version, fraction, started_at) of the "ab" or "shadow" experiment, or None."""
        current = self._ab if which == "ab" else self._shadow
        return None if current is None else (current[0].version, current[1], current[2])

    def forget(self, version: int) -> None:
        """Stop any experiment on `version` (it is about to serve everyone)."""
        with self._lock:
            if self._ab is not None and self._ab[0].version == version:
                self._ab = None
            if self._shadow is not None and self._shadow[0].version == version:
                self._shadow = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
