"""What operators watch beside the request counters: exposure of the newest responses, hit rate,
impressions and clicks per model line and A/B arm, CTR and item-mix drift, and the prediction
log. The engine feeds it from request threads; every call is a few dict operations under a lock.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from covisit.core.drift import CtrDrift, ItemDrift
from covisit.core.events import Event
from covisit.core.exposure import ExposureStats, ExposureWindow
from covisit.core.prediction_log import PredictionLog

class HitRate:
    """Share of the newest `size` requests with impressions that got at least one click."""

    def __init__(self, size: int):
        self._shown: OrderedDict[str, bool] = OrderedDict()  # request id -> clicked
        self._size = size
        self._hits = 0
        self._lock = threading.Lock()

    def shown(self, request_id: str) -> None:
        with self._lock:
            if request_id in self._shown:
                return
            self._shown[request_id] = False
            if len(self._shown) > self._size:
                _, clicked = self._shown.popitem(last=False)
                self._hits -= clicked

    def clicked(self, request_id: str) -> None:
        with self._lock:
            if self._shown.get(request_id) is False:  # unknown (too old, never shown): no hit
                self._shown[request_id] = True
                self._hits += 1

    def figures(self) -> tuple[int, int]:
        """(requests with impressions, those clicked)."""
        with self._lock:
            return len(self._shown), self._hits

    @property
    def rate(self) -> float:
        shown, hits = self.figures()
        return hits / shown if shown else 0.0


class Monitor:
    """Each part defaults to its class's defaults, without a prediction log."""

    MAX_LINES = 50  # model lines whose impressions and clicks per arm are kept

    def __init__(self, exposure: ExposureWindow | None = None, ctr_drift: CtrDrift | None = None,
                 item_drift: ItemDrift | None = None, predictions: PredictionLog | None = None,
                 clock=time.time):
        self.exposure = exposure or ExposureWindow()
        self.hits = HitRate(self.exposure.size)
        self.ctr_drift = ctr_drift or CtrDrift(clock=clock)
        self.item_drift = item_drift or ItemDrift()
        self.predictions = predictions
        # (line, arm) -> [impressions, clicks], for the newest MAX_LINES lines
        self._feedback: dict[tuple[int, str], list[int]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, s, data_dir: str | Path | None = None, clock=time.time) -> Monitor:
        """From the server's [monitor] section; the prediction log goes to
        s.prediction_log_dir, or `data_dir`/predictions (none without either)."""
        directory = s.prediction_log_dir or (Path(data_dir) / "predictions" if data_dir else None)
        predictions = (PredictionLog(directory, sample_rate=s.prediction_log_sample_rate,
                                     max_file_bytes=s.prediction_log_file_mb * 2**20,
                                     max_files=s.prediction_log_files, clock=clock)
                       if s.prediction_log and directory else None)
        return cls(ExposureWindow(s.exposure_window),
                   CtrDrift(s.ctr_window_seconds, s.ctr_baseline_seconds, s.ctr_drop, s.ctr_min_impressions,
                            clock=clock, min_z=s.ctr_min_z),
                   ItemDrift(s.drift_window, s.drift_baseline, s.drift_threshold), predictions, clock)

    def responded(self, request_id: str, user_id: str, context: Sequence[str], items: Sequence,
                  version: int, arm: str) -> None:
        """One response: `items` are Scored (item_id, score, source)."""
        self.exposure.add([s.item_id for s in items], [s.source for s in items])
        if self.predictions is not None:
            self.predictions.response(request_id, user_id, context, [(s.item_id, s.source) for s in items],
                                      version, arm)

    def shown(self, request_id: str, line: int, arm: str, item_ids: Sequence[str]) -> None:
        self._add(line, arm, 0, len(item_ids))
        self.hits.shown(request_id)
        self.ctr_drift.record(impressions=len(item_ids))
        if self.predictions is not None:
            self.predictions.impression(request_id, item_ids)

    def clicked(self, request_id: str, line: int, arm: str, item_id: str) -> None:
        self._add(line, arm, 1, 1)
        self.hits.clicked(request_id)
        self.ctr_drift.record(clicks=1)
        if self.predictions is not None:
            self.predictions.click(request_id, item_id)

    def events(self, events: Sequence[Event]) -> None:
        self.item_drift.record([ev.item_id for ev in events])

    def _add(self, line: int, arm: str, field: int, n: int) -> None:
        with self._lock:
            feedback = self._feedback
            if (line, arm) not in feedback:
                feedback[(line, arm)] = [0, 0]
                lines = sorted({key[0] for key in feedback})
                for old in lines[:-self.MAX_LINES]:  # every full build starts a line: stay bounded
                    for key in [key for key in feedback if key[0] == old]:
                        del feedback[key]
            feedback[(line, arm)][field] += n

    def feedback(self) -> list[tuple[int, str, int, int]]:
        """(line, arm, impressions, clicks), newest line first."""
        with self._lock:
            return sorted(((line, arm, i, c) for (line, arm), (i, c) in self._feedback.items()), reverse=True)

    def exposure_stats(self, catalog_size: int) -> ExposureStats:
        return self.exposure.stats(catalog_size)

    def drift_alerts(self) -> dict[str, str]:
        """kind -> reason for the drift alerts that hold now."""
        out = {}
        if (reason := self.ctr_drift.check()) is not None:
            out["ctr_drop"] = reason
        if (reason := self.item_drift.check()) is not None:
            out["drift"] = reason
        return out

    def close(self) -> None:
        if self.predictions is not None:
            self.predictions.close()
