"""Pareto frontier over (target, general) and the rules that pick one point from it.

Scores are 0-100, higher is better on both axes. Rules see only validation scores; the caller reports the chosen
point's test scores (as model soups and LiNeS do).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import RewindError
from .results import Scored

RULES = ("max-target-within", "knee", "max-sum", "weighted")


def frontier(points: Sequence[Scored]) -> list[Scored]:
    """Points no other point beats on both axes (ties kept), sorted by target."""

    def beats(q: Scored, p: Scored) -> bool:
        return q.target >= p.target and q.general >= p.general and (q.target, q.general) != (p.target, p.general)

    front = [p for p in points if not any(beats(q, p) for q in points)]
    return sorted(front, key=lambda p: (p.target, p.general))


SCALAR_RULES = ("max-target-within", "max-sum", "weighted")  # rules that rank single points (knee needs a frontier)


def objective(rule: str, base: Scored | None, tolerance: float = 1.0, weight: float = 0.5):
    """A sort key for one point under a scalar rule (larger is better); what `select` maximises and search climbs.
    (`base` None: only check the rule and its settings.)

    - max-target-within: points whose general >= base general - tolerance rank by target, above every point that
      falls short; those rank by how far they fall short (so a search can climb back). The base always qualifies.
    - max-sum: target + general.
    - weighted: weight*target + (1 - weight)*general.
    Ties go to the higher general score.
    """
    if rule == "max-target-within":

        def key(p: Scored):
            shortfall = base.general - tolerance - p.general
            feasible = shortfall <= 0 or p.key == base.key
            return (1, p.target, p.general) if feasible else (0, -shortfall, p.general)

        return key
    if rule == "max-sum":
        return lambda p: (p.target + p.general, p.general)
    if rule == "weighted":
        if not 0 <= weight <= 1:
            raise RewindError(f"--weight {weight}: must be in [0, 1]")
        return lambda p: (weight * p.target + (1 - weight) * p.general, p.general)
    if rule == "knee":
        raise RewindError(
            f"the knee rule ranks a whole frontier, not single points: choose one of {', '.join(SCALAR_RULES)}"
        )
    raise RewindError(f"--select {rule}: choose one of {', '.join(RULES)}")


def select(
    points: Sequence[Scored], base: Scored, rule: str = "max-target-within", tolerance: float = 1.0, weight: float = 0.5
) -> Scored:
    """One point by `rule`: the best under `objective` for the scalar rules, or

    - knee: the frontier point farthest from the straight line joining the frontier's two ends (axes scaled to
      their ranges), i.e. where trading general for target stops paying.
    Ties go to the higher general score, then to the earlier point (closer to the base in sweep order).
    """
    if not points:
        raise RewindError("no evaluated points to select from")
    order = {id(p): i for i, p in enumerate(points)}
    if rule != "knee":
        value = objective(rule, base, tolerance, weight)
        return max(points, key=lambda p: (value(p), -order[id(p)]))
    front = frontier(points)
    if len(front) < 3:
        return max(front, key=lambda p: (p.target + p.general, p.general, -order[id(p)]))
    lo, hi = front[0], front[-1]
    span_t = (hi.target - lo.target) or 1.0
    span_g = (lo.general - hi.general) or 1.0

    def distance(p):  # to the chord, in range-normalised coordinates
        x, y = (p.target - lo.target) / span_t, (p.general - hi.general) / span_g
        return x + y - 1.0

    return max(front, key=lambda p: (distance(p), p.general, -order[id(p)]))
