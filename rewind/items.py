"""Per-item scores of a sweep's points (items.jsonl beside results.jsonl) and the paired bootstrap over them.

items.jsonl has one line per point x split x task, as results.jsonl: {"run", "point", "path", "alpha", "layers",
"split", "role", "suite", "task", "metric", "score"} and the task's items as lm-eval logged them
(harness.per_item): "doc" (doc ids), "values" and "weights" (a_i, b_i), "aggregation"; "doc" and "values" are null
where lm-eval logged no per-item value of the metric, or where those values do not give the task's score (a group
that lm-eval aggregates otherwise): such a task, and so the sweep, has no intervals. A point's item lines are
appended before its results lines, in the same locked, fsynced, whole-point write (results.JsonlLog), so a point
whose results are logged has its items logged too; a point counts as done when both are (Session.finished).

Per-item scores. lm-eval scores a task as S = to_score(metric, h(r)) with r = sum a_i / sum b_i: for a mean
(accuracy, exact match, F1, pass@k) b_i = 1, h is the identity and item i scores 100 a_i; for a ratio of sums
(bits_per_byte, perplexities: a_i an item's loglikelihood, b_i its bytes or words) h is lm-eval's aggregation.
Those items get their linearized (influence) values x_i = S + S'(r) (a_i - r b_i) / mean(b) (the delta method):
sum (a_i - r b_i) = 0, so their mean is S exactly and the bootstrap's point estimate is the reported score; a
resampled mean of x_i is the first-order expansion of the resampled ratio, not the ratio itself, so such a task's
interval is the delta method's (close while it has many items, as a perplexity task's hundreds of paragraphs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import stats
from .evaluate.harness import SCORE_MAPS, to_score
from .results import JsonlLog

ITEMS_FILE = "items.jsonl"
AXES = ("target", "general")
RACE = "race"  # the split of a race's chunks (racing.py): validation items, a chunk of a task per line
REPEAT = "repeat"  # the split of the base's second validation evaluation (Session.repeat_base): the noise floor
# lm-eval's aggregations rewind reads per item: the task's value as a function of r = sum a_i / sum b_i.
RATIOS = {
    "mean": lambda r: r,
    "bits_per_byte": lambda r: -r / math.log(2),
    "weighted_perplexity": lambda r: math.exp(-r),
    "perplexity": lambda r: math.exp(-r),
}


class ItemsLog(JsonlLog):
    """items.jsonl: appended, repaired and read as results.jsonl (whole points only, a torn tail dropped)."""

    KEYS = ("run", "point", "split", "role", "suite", "task", "doc", "values")


def line(head: dict, result) -> dict:
    """The items line of one harness.TaskResult; `head`: the point's fields (run, point, split, role, ...)."""
    out = {**head, "suite": result.suite, "task": result.task, "metric": result.metric, "score": result.score}
    out |= result.items or {"doc": None, "values": None}
    x = scores(out)
    if x is not None and not math.isclose(float(x.mean()), result.score, rel_tol=1e-9, abs_tol=1e-9):
        out |= {"doc": None, "values": None}  # the items do not give lm-eval's score: no interval is honest
    return out


def scores(item_line: dict) -> np.ndarray | None:
    """A task's per-item scores, 0-100, whose mean is its score (module docstring); None where it has none."""
    h = RATIOS.get(item_line.get("aggregation"))
    if item_line.get("values") is None or h is None:
        return None
    a = np.asarray(item_line["values"], float)
    b = np.asarray(item_line.get("weights") or np.ones_like(a), float)
    metric = item_line["metric"]
    if item_line["aggregation"] == "mean" and metric.split(",")[0] not in SCORE_MAPS:
        return 100.0 * a  # exact: the items are the score's own terms
    if b.sum() <= 0 or not np.isfinite(a).all():
        return None
    r = a.sum() / b.sum()
    score = lambda v: to_score(metric, h(v))  # noqa: E731
    step = 1e-5 * (1.0 + abs(r))
    slope = (score(r + step) - score(r - step)) / (2 * step)
    return score(r) + slope * (a - r * b) / b.mean()


def by_point(lines: Sequence[dict], split: str, points: Sequence[str]) -> dict[str, dict[str, dict]]:
    """{point: {task: {doc id: score}}} of `points` on `split`, target and general tasks with per-item scores (a
    point's later lines win: the same evaluation again)."""
    out: dict[str, dict[str, dict]] = {p: {} for p in points}
    for item_line in lines:
        if item_line["split"] != split or item_line["point"] not in out or item_line["role"] not in AXES:
            continue
        x = scores(item_line)
        if x is not None:
            out[item_line["point"]][item_line["task"]] = dict(zip(map(_doc, item_line["doc"]), x))
    return out


def _doc(doc) -> object:
    return tuple(doc) if isinstance(doc, list) else doc  # hashable, whatever lm-eval used as an id


def axes(lines: Sequence[dict], target: Sequence[str], general: Sequence[str]) -> dict[str, dict[str, float]]:
    """{"target" | "general": {task: weight}} as the sweep scores them: the mean over suites of each suite's mean
    task score (stats.suite_weights), the suites' tasks as the lines name them."""
    tasks: dict[str, dict[str, set]] = {axis: {} for axis in AXES}
    for item_line in lines:
        if item_line["role"] in AXES:
            tasks[item_line["role"]].setdefault(item_line["suite"], set()).add(item_line["task"])
    suites = {"target": target, "general": general}
    return {axis: stats.suite_weights({s: sorted(tasks[axis].get(s, ())) for s in suites[axis]}) for axis in AXES}


def bootstrap(
    lines: Sequence[dict], split: str, points: Sequence[str], target, general, confidence: float = 0.9
) -> stats.Bootstrap | None:
    """The paired bootstrap (stats.paired_bootstrap) of `points` on `split`, stratified by task, on the sweep's
    axes; None unless every point has per-item scores on every target and general task."""
    weights = axes(lines, target, general)
    tasks = set().union(*weights.values())
    if not points or not all(weights.values()) or any(not suite for suite in [*target, *general]):
        return None
    items = by_point(lines, split, points)
    if any(set(scored) != tasks for scored in items.values()):
        return None
    return stats.paired_bootstrap(stats.align(items), weights, confidence=confidence)


def noise_floor(lines: Sequence[dict], point: str, split: str) -> dict | None:
    """{"point", "flips": {task: items scored differently}, "items": {task: items}} between `point`'s evaluation
    on `split` and its REPEAT (stats.flips); None where it was not evaluated again."""
    first, again = {}, {}
    for item_line in lines:
        if item_line["point"] == point and item_line["split"] in (split, REPEAT) and scores(item_line) is not None:
            which = again if item_line["split"] == REPEAT else first
            which[item_line["task"]] = dict(zip(map(_doc, item_line["doc"]), scores(item_line)))
    if not again or set(again) != set(first):
        return None
    aligned = stats.align({"first": first, "again": again})
    flips = stats.flips(aligned["first"], aligned["again"])
    return {"point": point, "flips": flips, "items": {task: len(x) for task, x in aligned["first"].items()}}
