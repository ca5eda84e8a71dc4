"""Per-item agreement between two finished sweeps of the same items (no model): issue 16's grid vs point by point.

    python bench/item_agreement.py GRID_SWEEP POINT_SWEEP [--split validation] [--out FILE]

For every point both sweeps scored on --split: per task, the items scored in both and those whose score differs
(items.jsonl, the scores the report's intervals use). Beside it, each sweep's own noise floor: the base evaluated
twice in one sweep (a CUDA sweep does), the items that flipped between the two. Agreement within the noise floor
means grid mode changes no more than running the same point again does. E.g. the H200 grid sweep in
docs/study/sweeps-256/oft against a `--batch-points 1` sweep of some of its points (`bench/gpu/issues.sh agree`).
"""

from __future__ import annotations

import argparse
import json

import _sweeps  # bench-local: the script's own directory is first on sys.path

from rewind import items, stats
from rewind.results import BASE, VALIDATION


def item_scores(sweep: str, split: str) -> tuple[dict, dict | None, dict]:
    """{point: {task: {doc: score}}} of the sweep's split, its noise floor (None: not measured) and its axes
    ({"target" | "general": {task: weight}}, as the sweep scores them)."""
    report, _, lines = _sweeps.read(sweep)
    points = sorted({line["point"] for line in lines if line["split"] == split})
    spec = report.spec
    weights = items.axes(lines, spec["target"], spec["general"])
    floor = items.noise_floor(lines, BASE.key, split) if split == VALIDATION else None  # repeated on validation
    return items.by_point(lines, split, points), floor, weights


def compare(first: dict, second: dict) -> dict:
    """{point: {task: {"items": scored in both, "differ": scored differently}}} over the points and tasks both have."""
    out = {}
    for point in sorted(set(first) & set(second)):
        for task in sorted(set(first[point]) & set(second[point])):
            a, b = first[point][task], second[point][task]
            common = set(a) & set(b)
            differ = int(sum(abs(a[d] - b[d]) > 1e-9 for d in common))
            out.setdefault(point, {})[task] = {"items": len(common), "differ": differ}
    return out


def score_differences(first: dict, second: dict, weights: dict, confidence: float) -> dict:
    """{point: {axis: [first - second, low, high]}}: the paired difference of the two sweeps' scores of the same
    point on the same items, with its interval. An item that differs moves a score; this says whether the
    differing items move it one way."""
    out = {}
    for point in sorted(set(first) & set(second)):
        pair = {"first": first[point], "second": second[point]}
        if any(set(scores) != set().union(*weights.values()) for scores in pair.values()):
            continue  # a point scored on some tasks only: no axis score to compare
        boot = stats.paired_bootstrap(stats.align(pair), weights, confidence=confidence)
        out[point] = {axis: _triple(boot.diff("first", "second", axis)) for axis in weights}
    return out


def _triple(interval: stats.Interval) -> list[float]:
    return [interval.estimate, interval.low, interval.high]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    (a, floor_a, weights), (b, floor_b, _) = item_scores(args.first, args.split), item_scores(args.second, args.split)
    per_point = compare(a, b)
    moved = score_differences(a, b, weights, args.confidence)
    record = {
        "first": args.first,
        "second": args.second,
        "split": args.split,
        "points": per_point,
        "items": sum(t["items"] for p in per_point.values() for t in p.values()),
        "differ": sum(t["differ"] for p in per_point.values() for t in p.values()),
        "noise_floor": {"first": floor_a, "second": floor_b},
        "score_difference": moved,
        "confidence": args.confidence,
    }
    for point, tasks in per_point.items():
        n, d = sum(t["items"] for t in tasks.values()), sum(t["differ"] for t in tasks.values())
        shift = "".join(
            f"  {axis} {e:+.2f} [{lo:+.2f}, {hi:+.2f}]" for axis, (e, lo, hi) in moved.get(point, {}).items()
        )
        print(f"{point:<14} {d:>5} of {n} items differ{shift}")
    for name, floor in record["noise_floor"].items():
        flips = "not measured" if floor is None else f"{sum(floor['flips'].values())} of {sum(floor['items'].values())}"
        print(f"noise floor ({name}): {flips}")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
