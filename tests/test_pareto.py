"""Frontier and selection rules on hand-made points."""

import pytest

from rewind import results
from rewind.errors import RewindError
from rewind.pareto import frontier, select
from rewind.results import Scored


def scored(key: str, target: float, general: float) -> Scored:
    path, alpha = key.split("@")
    return Scored(results.Point.of({"path": path, "alpha": float(alpha)}), target, general)


BASE = scored("base@0", 10.0, 50.0)
POINTS = [
    BASE,
    scored("p@0.3", 20.0, 49.5),
    scored("p@0.6", 30.0, 48.0),
    scored("p@0.8", 34.0, 45.0),
    scored("final@1", 35.0, 40.0),
    scored("q@0.5", 25.0, 47.0),
]


def test_frontier_drops_dominated_points():
    assert [p.key for p in frontier(POINTS)] == ["base@0", "p@0.3", "p@0.6", "p@0.8", "final@1"]


def test_max_target_within_tolerance():
    assert select(POINTS, BASE, "max-target-within", tolerance=1.0).key == "p@0.3"
    assert select(POINTS, BASE, "max-target-within", tolerance=2.0).key == "p@0.6"
    assert select(POINTS, BASE, "max-target-within", tolerance=0.0).key == "base@0"


def test_other_rules():
    assert select(POINTS, BASE, "max-sum").key == "p@0.8"  # 79 beats 78, 75, 69.5
    assert select(POINTS, BASE, "weighted", weight=0.0).key == "base@0"
    assert select(POINTS, BASE, "weighted", weight=1.0).key == "final@1"
    # chord from (10, 50) to (35, 40); p@0.6 bulges out furthest in range-normalised units
    assert select(POINTS, BASE, "knee").key == "p@0.6"


def test_ties_prefer_general_then_earlier():
    pts = [BASE, scored("a@0.2", 20.0, 49.0), scored("b@0.2", 20.0, 49.5), scored("c@0.2", 20.0, 49.5)]
    assert select(pts, BASE, "max-target-within", tolerance=1.0).key == "b@0.2"


def test_bad_rule():
    with pytest.raises(RewindError, match="--select"):
        select(POINTS, BASE, "best")
    with pytest.raises(RewindError, match="weight"):
        select(POINTS, BASE, "weighted", weight=2)
