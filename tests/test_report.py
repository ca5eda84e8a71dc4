"""The typed point (results.Point) and the report over hand-made results.jsonl lines (no model)."""

from __future__ import annotations

import pytest
import tinysweep

from rewind import report, results
from rewind.errors import RewindError
from rewind.results import BASE, FINAL, Point

POINTS = [
    (BASE, "base@0", {"path": "base", "alpha": 0.0, "layers": None}),
    (FINAL, "final@1", {"path": "final", "alpha": 1.0, "layers": None}),
    (Point.at("cayley", 0.3), "cayley@0.3", {"path": "cayley", "alpha": 0.3, "layers": None}),
    (Point.train(200), "train@200", {"path": "train", "alpha": 200.0, "layers": None}),
    (
        Point.at("linear", 1.0, [1, 1, 0.8, 0.8, 0.8]),
        "linear@1[1x2,0.8x3]",
        {"path": "linear", "alpha": 1.0, "layers": [1, 1, 0.8, 0.8, 0.8]},
    ),
]


@pytest.mark.parametrize(("point", "key", "fields"), POINTS, ids=[p[1] for p in POINTS])
def test_a_point_is_named_as_results_jsonl_names_it(point, key, fields):
    assert point.key == key and point.fields() == fields
    assert Point.of(fields) == point  # read back from a line (or a summary row) as the same point


def test_kinds_and_where_each_sits_on_its_path():
    assert [p.kind for p, _, _ in POINTS] == ["base", "final", "path", "train", "searched"]
    assert (BASE.alpha, FINAL.alpha, Point.train(5).alpha, Point.train(5).step) == (0.0, 1.0, 1.0, 5)
    # Every layer at one alpha is the uniform point; uniform 0 and 1 are base and final on any path.
    assert Point.at("dense", 0.5, [0.5, 0.5]) == Point.at("dense", 0.5) == Point("path", "dense", 0.5)
    assert Point.at("dense", 0.0, [0.0, 0.0]) is BASE and Point.at("cayley", 1.0) is FINAL


def test_plan_orders_base_final_paths_then_checkpoints():
    keys = [p.key for p in results.plan([0, 0.5, 1], ["cayley", "dense"], [10, 20])]
    assert keys == ["base@0", "final@1", "cayley@0.5", "dense@0.5", "train@10", "train@20"]


def _lines(point: Point, split: str, target: float, general: float) -> list[dict]:
    named = {"run": "r", "point": point.key, **point.fields(), "split": split, "point_seconds": 1.0}
    return [
        {**named, "role": "target", "suite": "t", "task": "t1", "score": target, "metric": "acc,none"},
        {**named, "role": "general", "suite": "g", "task": "g1", "score": general, "metric": "acc,none"},
    ]


def test_report_selects_once_and_again_only_when_validation_changes():
    half = Point.at("linear", 0.5)
    lines = (
        _lines(BASE, "validation", 10, 50) + _lines(FINAL, "validation", 40, 40) + _lines(half, "validation", 30, 49.5)
    )
    rep = report.Report(tinysweep.RECORD, lines)
    chosen = rep.selection
    assert chosen.selected.key == "linear@0.5" and [r.key for r in chosen.frontier] == [
        "base@0",
        "linear@0.5",
        "final@1",
    ]
    rep.extend(_lines(half, "test", 28, 47))  # test lines report; they do not choose
    assert rep.selection is chosen and rep.entry(chosen.selected)["test"]["target"] == 28
    searched = Point.at("linear", 0.5, [0.5, 0.6])
    rep.extend(_lines(searched, "validation", 35, 49.5))  # a point found later joins, last in sweep order
    assert rep.selection is not chosen and rep.selection.selected.point == searched
    assert [r.key for r in rep.rows()][-1] == searched.key
    summary = rep.summary()
    assert summary["selected"]["layers"] == [0.5, 0.6] and summary["metrics"] == {
        "target": {"t1": "acc,none"},
        "general": {"g1": "acc,none"},
    }
    assert "<- selected layers 0.5,0.6" in report.table(summary)


def test_report_without_a_base_score_is_a_sentence():
    with pytest.raises(RewindError, match="point base@0 has no validation score"):
        report.Report(tinysweep.RECORD, _lines(FINAL, "validation", 40, 40)).summary()
