"""The quality gate: a candidate version may serve only if its next-item HR@k on held-out events
is not worse than the serving version's by more than a relative tolerance.

Prequential (test-then-train): the caller turns each batch into predictions *before* the learner
applies it, so neither version has seen the events it is scored on. The predictions follow the
offline protocol (evaluation.py): sequences by session, else by user split at the session gap,
consecutive repeats dropped, the newest `max_context` items as context, and scoring.recommend
with the snapshot's own config (so context items are excluded exactly as `recommend_batch` does
there).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from covisit.core.events import DEFAULT_SESSION_GAP, Event
from covisit.core.scoring import MAX_K, recommend
from covisit.core.snapshot import Snapshot

# Slack for comparing rates that are exactly at the tolerance (0.05 * 0.8 != 0.04 in floats).
EPSILON = 1e-9


class Prediction(NamedTuple):
    context: tuple[str, ...]  # newest last
    target: str


class Predictions:
    """Turns an event stream into next-item predictions; feed it batches in log order.

    Keeps each sequence's newest `max_context` items, for at most `max_sequences` sequences
    (the least recently active is forgotten, and starts afresh if it comes back)."""

    def __init__(self, max_context: int = 10, max_sequences: int = 100_000,
                 session_gap: float = DEFAULT_SESSION_GAP):
        if max_context < 1 or max_sequences < 1:
            raise ValueError("max_context and max_sequences must be >= 1")
        self.max_context = max_context
        self.max_sequences = max_sequences
        self.session_gap = session_gap
        self._recent: OrderedDict[str, tuple[tuple[str, ...], float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._recent)

    def feed(self, events: Iterable[Event]) -> list[Prediction]:
        out = []
        recent = self._recent
        for ev in events:
            key = ev.sequence_key()
            context, last_time = recent.pop(key, ((), 0.0))
            if context and not ev.session_id and ev.timestamp - last_time > self.session_gap:
                context = ()  # a user's new session, as the model and the offline protocol split it
            if context and ev.item_id != context[-1]:
                out.append(Prediction(context, ev.item_id))
            if not context or ev.item_id != context[-1]:  # repeats are dropped, not appended
                context = (context + (ev.item_id,))[-self.max_context:]
            recent[key] = (context, ev.timestamp)
            if len(recent) > self.max_sequences:
                recent.popitem(last=False)
        return out


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    candidate_hr: float
    serving_hr: float
    n: int  # predictions scored
    reason: str


def decide(candidate_hits: int, serving_hits: int, n: int, k: int, tolerance: float = 0.1) -> GateDecision:
    """Pass unless the candidate's HR@k is below the serving one's by more than `tolerance`
    (relative); a serving HR of 0 (or no predictions) lets any candidate pass."""
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    candidate_hr = candidate_hits / n if n else 0.0
    serving_hr = serving_hits / n if n else 0.0
    figures = f"HR@{k} {candidate_hr:.3f} vs serving {serving_hr:.3f} on {n} held-out predictions"
    limit = f"tolerance {tolerance * 100:g}%"
    if serving_hr == 0:
        return GateDecision(True, candidate_hr, serving_hr, n, f"{figures}: serving has no hits, {limit}")
    change = candidate_hr / serving_hr - 1
    passed = change >= -tolerance - EPSILON
    direction = "worse" if change < 0 else "better"
    return GateDecision(passed, candidate_hr, serving_hr, n,
                        f"{figures}: {abs(change) * 100:.1f}% {direction}, {limit}")


class GateRun:
    """Scores up to `events` predictions with a candidate and the serving snapshot.

    Predictions whose target neither snapshot knows are skipped: both would miss, which says
    nothing about either. Not thread-safe: one learner feeds it."""

    def __init__(self, candidate: Snapshot, serving: Snapshot, events: int = 1000, k: int = 20):
        if events < 1:
            raise ValueError(f"events must be >= 1, got {events}")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
        self.candidate, self.serving = candidate, serving
        self.events, self.k = events, k
        self.n = self.candidate_hits = self.serving_hits = 0

    @property
    def done(self) -> bool:
        return self.n >= self.events

    def observe(self, predictions: Iterable[Prediction]) -> int:
        """Score predictions until `events` are scored; returns how many this call scored."""
        scored = 0
        for context, target in predictions:
            if self.done:
                break
            if target not in self.candidate.items and target not in self.serving.items:
                continue
            self.candidate_hits += _hit(self.candidate, context, target, self.k)
            self.serving_hits += _hit(self.serving, context, target, self.k)
            self.n += 1
            scored += 1
        return scored

    def decision(self, tolerance: float = 0.1) -> GateDecision:
        return decide(self.candidate_hits, self.serving_hits, self.n, self.k, tolerance)


def _hit(snapshot: Snapshot, context: tuple[str, ...], target: str, k: int) -> bool:
    return any(s.item_id == target for s in recommend(snapshot, context, k))
