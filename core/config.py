"""Model settings: how events become links, how links are scored, how a context is combined."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from covisit.core import kernels_build as kb
from covisit.core.events import DEFAULT_EVENT_WEIGHTS, DEFAULT_SESSION_GAP

DISTANCE_MODES = {"none": kb.DIST_NONE, "inverse": kb.DIST_INVERSE, "linear": kb.DIST_LINEAR}
SIMILARITIES = {
    "raw": kb.SIM_RAW,
    "cosine": kb.SIM_COSINE,
    "jaccard": kb.SIM_JACCARD,
    "lift": kb.SIM_LIFT,
    "llr": kb.SIM_LLR,
    "conditional": kb.SIM_CONDITIONAL,
}


@dataclass(frozen=True)
class ModelConfig:
    # Item i links to each item up to `window` events after it in the same sequence. The
    # defaults won a grid search under the offline protocol on online-retail (README,
    # "Evaluation"): a short forward window, a little of the reverse direction, counts
    # normalised per row, and a context dominated by its newest item.
    window: int = 2
    # Weight of the reverse link j -> i (0 = directed, 1 = symmetric co-visitation).
    backward: float = 0.1
    # How a pair's weight falls with the distance between its events.
    distance: str = "inverse"
    # Time-decay half-life in seconds for links and popularity; 0 turns decay off.
    half_life: float = 0.0
    # Score of a link on top of its exact count.
    similarity: str = "conditional"
    # Neighbours kept per item in the serving snapshot (bounds memory and request work).
    top_n: int = 200
    # A context item `a` positions before the newest weighs recency**a.
    recency: float = 0.3
    # Newest context items used per request.
    max_context: int = 10
    # Leave the context items themselves out of the results.
    exclude_context: bool = True
    # Inactivity (seconds) that ends a user's session when events carry no session_id.
    session_gap: float = DEFAULT_SESSION_GAP
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))

    def __post_init__(self) -> None:
        checks = [
            ("window", _integer(self.window) and 1 <= self.window <= 1000, "an integer in 1..1000"),
            ("backward", _finite(self.backward) and self.backward >= 0, "a number >= 0"),
            ("distance", self.distance in DISTANCE_MODES, f"one of {sorted(DISTANCE_MODES)}"),
            ("half_life", _finite(self.half_life) and self.half_life >= 0, "seconds >= 0"),
            ("similarity", self.similarity in SIMILARITIES, f"one of {sorted(SIMILARITIES)}"),
            ("top_n", _integer(self.top_n) and 1 <= self.top_n <= 100_000, "an integer in 1..100000"),
            ("recency", _finite(self.recency) and 0 < self.recency <= 1, "a number in (0, 1]"),
            ("max_context", _integer(self.max_context) and 1 <= self.max_context <= 1000,
             "an integer in 1..1000"),
            ("session_gap", _finite(self.session_gap) and self.session_gap > 0, "seconds > 0"),
            ("event_weights", bool(self.event_weights)
             and all(isinstance(t, str) and _finite(w) and w > 0 for t, w in self.event_weights.items()),
             "a non-empty map of event type names to positive weights"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"model config {name}={getattr(self, name)!r}: must be {expected}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model config: unknown settings {unknown}")
        return cls(**values)


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
