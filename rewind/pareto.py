"""Pareto frontier over (target, general) and the rules that pick one point from it.

Scores are 0-100, higher is better on both axes. Rules see only validation scores; the caller reports the chosen
point's test scores (as model soups and LiNeS do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import RewindError

RULES = ("max-target-within", "knee", "max-sum", "weighted")


@dataclass(frozen=True)
class Scored:
    key: str  # identifies the point (path, alpha, schedule)
    target: float
    general: float


def frontier(points: Sequence[Scored]) -> list[Scored]:
    """Points no other point beats on both axes (ties kept), sorted by target."""
    def beats(q: Scored, p: Scored) -> bool:
        return q.target >= p.target and q.general >= p.general and (q.target, q.general) != (p.target, p.general)

    front = [p for p in points if not any(beats(q, p) for q in points)]
    return sorted(front, key=lambda p: (p.target, p.general))


def select(points: Sequence[Scored], base: Scored, rule: str = "max-target-within", tolerance: float = 1.0,
           weight: float = 0.5) -> Scored:
    """One point by `rule`:

    - max-target-within: the highest target among points whose general >= base general - tolerance (points);
      the base itself always qualifies, so there is always an answer.
    - knee: the frontier point farthest from the straight line joining the frontier's two ends (axes scaled to
      their ranges), i.e. where trading general for target stops paying.
    - max-sum: the highest target + general.
    - weighted: the highest weight*target + (1 - weight)*general.
    Ties go to the higher general score, then to the earlier point (closer to the base in sweep order).
    """
    if not points:
        raise RewindError("no evaluated points to select from")
    order = {id(p): i for i, p in enumerate(points)}

    def best(candidates, value):
        return max(candidates, key=lambda p: (value(p), p.general, -order[id(p)]))

    if rule == "max-target-within":
        allowed = [p for p in points if p.general >= base.general - tolerance] or [base]
        return best(allowed, lambda p: p.target)
    if rule == "max-sum":
        return best(points, lambda p: p.target + p.general)
    if rule == "weighted":
        if not 0 <= weight <= 1:
            raise RewindError(f"--weight {weight}: must be in [0, 1]")
        return best(points, lambda p: weight * p.target + (1 - weight) * p.general)
    if rule == "knee":
        front = frontier(points)
        if len(front) < 3:
            return best(front, lambda p: p.target + p.general)
        lo, hi = front[0], front[-1]
        span_t = (hi.target - lo.target) or 1.0
        span_g = (lo.general - hi.general) or 1.0

        def distance(p):  # to the chord, in range-normalised coordinates
            x, y = (p.target - lo.target) / span_t, (p.general - hi.general) / span_g
            return x + y - 1.0

        return best(front, distance)
    raise RewindError(f"--select {rule}: choose one of {', '.join(RULES)}")
