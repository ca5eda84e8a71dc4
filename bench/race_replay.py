"""Replay `rewind sweep --race` over a finished full-grid sweep's per-item scores (no model, no device).

    python bench/race_replay.py docs/study/sweeps-256/oft [--chunk 64] [--budget N] [--confidence 0.9] [--out F]

stats.race, as racing.py calls it (every validation point, the base and the final kept, rounds of --chunk items of
every task), but each chunk's scores are read from the sweep's items.jsonl instead of evaluated. Prints when each
point was dropped and by which, the item evaluations spent against the full grid's, and the selection over the
survivors (their items joined as racing.settle joins them) against the full grid's selection, with intervals.
The items were scored once, on the sweep's device: a real race scores them again in chunks (other batches), so
it can differ where the sweep's noise floor says items flip. Also: a race can only be given the items the sweep
had (its --limit), so this shows what dropping points saves, not what a budget spent on more items would buy.
"""

from __future__ import annotations

import argparse
import json
import math

import _sweeps  # bench-local: the script's own directory is first on sys.path
import numpy as np

from rewind import items, stats
from rewind.report import Report
from rewind.results import BASE, FINAL, VALIDATION


def scores_by_task(lines: list[dict], points: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """{point: {task: per-item scores in doc order}} on validation."""
    got = items.by_point(lines, VALIDATION, points)
    return {
        p: {t: np.array([s for _, s in sorted(docs.items())]) for t, docs in tasks.items()} for p, tasks in got.items()
    }


def replay(report: Report, lines: list[dict], table: dict, chunk: int, budget: int, confidence: float) -> stats.Race:
    """The race over `table` (scores_by_task of the report's validation points)."""
    points = list(table)
    sizes = {t: len(x) for t, x in table[points[0]].items()}
    spec = report.spec
    axes = items.axes(lines, spec["target"], spec["general"])

    def evaluate_chunk(keys, task, part):
        return {k: table[k][task][part] for k in keys}

    rounds = [chunk] * math.ceil(max(sizes.values()) / chunk)
    keep = [BASE.key, FINAL.key]
    return stats.race(evaluate_chunk, points, axes, rounds, budget, sizes, keep, confidence)


def survivors_report(report: Report, records: list[dict], lines: list[dict], race: stats.Race) -> Report:
    """The sweep as the race leaves it: the survivors only, each task cut to the items they were given."""
    given = {t: len(x) for t, x in race.scores[race.survivors[0]].items()}
    kept_lines, kept_records = [], []
    for line in lines:
        if line["point"] in race.survivors and line["split"] == VALIDATION and line["task"] in given:
            n = given[line["task"]]
            cut = {**line, **{f: line[f][:n] for f in ("doc", "values", "weights") if line.get(f) is not None}}
            kept_lines.append({**cut, "score": float(items.scores(cut).mean())})
    scored = {(x["point"], x["task"]): x["score"] for x in kept_lines}
    for r in records:
        if r["point"] in race.survivors and r["split"] == VALIDATION:
            kept_records.append({**r, "score": scored.get((r["point"], r["task"]), r["score"])})
    return Report(report.record, kept_records, kept_lines)


def describe(summary: dict) -> dict:
    chosen = summary["selected"]
    return {
        "selected": chosen["key"],
        "target": [round(chosen["target"], 2), [round(v, 2) for v in chosen["target_ci"]]],
        "general": [round(chosen["general"], 2), [round(v, 2) for v in chosen["general_ci"]]],
        "verdict": summary["verdict"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--budget", type=int, default=None, help="item evaluations (default: the full grid's)")
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    report, records, lines = _sweeps.read(args.sweep)
    table = scores_by_task(lines, [row.key for row in report.rows()])
    full = sum(len(x) for row in table.values() for x in row.values())
    race = replay(report, lines, table, args.chunk, args.budget or full, args.confidence)
    out = {
        "sweep": args.sweep,
        "chunk": args.chunk,
        "confidence": args.confidence,
        "full_grid_items": full,
        "race_items": race.spent,
        "dropped": [e for e in race.log if "dropped" in e],
        "survivors": race.survivors,
        "full_grid": describe(report.summary()),
        "race": describe(survivors_report(report, records, lines, race).summary()),
    }
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
