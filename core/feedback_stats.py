"""Impressions, clicks and CTR per model version, over all time and over a sliding window, and
the rule that rolls a version back when its window CTR falls well below the previous one's.

An impression is one item shown (as the engine counts them); CTR = clicks / impressions. The
window is the newest requests of a version holding at least `window` impressions, with the
clicks those requests received. Memory is bounded: at most `window` requests per version, the
`max_versions` most recently active versions, and `window` early clicks (see `click`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

# Slack for comparing rates that are exactly at the limit (0.05 * 0.8 != 0.04 in floats).
EPSILON = 1e-9


class WindowStats(NamedTuple):
    version: int
    impressions: int
    clicks: int

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


class VersionStats(NamedTuple):
    version: int
    impressions: int
    clicks: int
    window: WindowStats

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


class _Version:
    __slots__ = ("clicks", "impressions", "requests", "window_clicks", "window_impressions")

    def __init__(self) -> None:
        self.impressions = self.clicks = 0
        self.window_impressions = self.window_clicks = 0
        self.requests: OrderedDict[str, list[int]] = OrderedDict()  # id -> [items, clicks], oldest first


class VersionFeedback:
    """Thread-safe: every method holds one lock for a few dict operations."""

    def __init__(self, window: int = 1000, max_versions: int = 50):
        if window < 1 or max_versions < 1:
            raise ValueError("window and max_versions must be >= 1")
        self.window = window
        self.max_versions = max_versions
        self._versions: OrderedDict[int, _Version] = OrderedDict()  # least recently active first
        self._request_version: dict[str, int] = {}  # requests in some version's window
        self._early: OrderedDict[str, int] = OrderedDict()  # clicks that came before their impression
        self._lock = threading.Lock()

    def impression(self, request_id: str, version: int, n_items: int) -> None:
        """`n_items` items of `version` were shown for `request_id` (again: they add up)."""
        if n_items < 0:
            raise ValueError(f"n_items must be >= 0, got {n_items}")
        with self._lock:
            version = self._request_version.get(request_id, version)
            v = self._touch(version)
            v.impressions += n_items
            v.window_impressions += n_items
            entry = v.requests.get(request_id)
            if entry is None:
                clicks = self._early.pop(request_id, 0)  # already in the totals
                v.requests[request_id] = [n_items, clicks]
                v.window_clicks += clicks
                self._request_version[request_id] = version
            else:
                entry[0] += n_items
            self._slide(v)

    def click(self, request_id: str, version: int | None = None) -> int | None:
        """Count a click for the version that served `request_id` and return it.

        The version of the request's impression wins; without one (the click came first, or
        the request left the window) it counts for `version`, the one the response named.
        Returns None, counting nothing, if neither is known."""
        with self._lock:
            known = self._request_version.get(request_id)
            if known is None and version is None:
                return None
            v = self._touch(version if known is None else known)
            v.clicks += 1
            if known is not None:
                v.requests[request_id][1] += 1
                v.window_clicks += 1
            else:  # its impression may still come, and then the click joins the window
                self._early[request_id] = self._early.pop(request_id, 0) + 1
                if len(self._early) > self.window:
                    self._early.popitem(last=False)
            return version if known is None else known

    def stats(self, version: int) -> VersionStats:
        """Totals and window of `version` (zeros if unknown or forgotten)."""
        with self._lock:
            v = self._versions.get(version)
            if v is None:
                return VersionStats(version, 0, 0, WindowStats(version, 0, 0))
            return VersionStats(version, v.impressions, v.clicks,
                                WindowStats(version, v.window_impressions, v.window_clicks))

    def versions(self) -> list[int]:
        """Versions tracked, least recently active first."""
        with self._lock:
            return list(self._versions)

    def _touch(self, version: int) -> _Version:
        v = self._versions.get(version)
        if v is None:
            v = self._versions[version] = _Version()
            if len(self._versions) > self.max_versions:
                _, old = self._versions.popitem(last=False)
                for request_id in old.requests:
                    del self._request_version[request_id]
        else:
            self._versions.move_to_end(version)
        return v

    def _slide(self, v: _Version) -> None:
        """Drop the oldest requests the window no longer needs to hold `window` impressions."""
        requests = v.requests
        while requests:
            request_id, (items, clicks) = next(iter(requests.items()))
            if v.window_impressions - items < self.window and len(requests) <= self.window:
                break
            del requests[request_id], self._request_version[request_id]
            v.window_impressions -= items
            v.window_clicks -= clicks


def auto_rollback_reason(current: WindowStats, previous: WindowStats, window: int,
                         max_drop: float) -> str | None:
    """Why `current` should be rolled back to `previous`, or None.

    Only full windows (>= `window` impressions each) are compared, and only a window CTR more
    than `max_drop` (relative) below the previous version's fires."""
    if current.impressions < window or previous.impressions < window:
        return None
    if current.ctr >= previous.ctr * (1 - max_drop) - EPSILON:
        return None
    drop = 1 - current.ctr / previous.ctr
    return (f"window CTR of version {current.version} {current.ctr:.4f} "
            f"({current.clicks}/{current.impressions}) vs version {previous.version} {previous.ctr:.4f} "
            f"({previous.clicks}/{previous.impressions}): {drop * 100:.1f}% lower, "
            f"limit {max_drop * 100:g}%")
