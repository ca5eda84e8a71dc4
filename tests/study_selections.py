"""What rewind reports for each of the study's saved sweeps (docs/study/sweeps/*), without a model.

`python tests/study_selections.py` rewrites tests/data/study_selections.json; test_study_selections.py checks that
the code of the day reports the same. The file was first written by main at 4d016d3, before the sweep was split
into session, results and report: it is the record of what the old code reported.

Per sweep: the selected point under every rule (with the sweep's tolerance and weight) and its validation and test
scores, the summary a sweep writes at the end (selection, frontier, every point's scores), the printed table, and
for a sweep with a search.json: the best uniform start, the search's own choice (its compass replayed over the
logged scores) and the selection over all points.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "docs" / "study" / "sweeps"
DATA = Path(__file__).resolve().parent / "data" / "study_selections.json"


def _sweep(directory: Path, out: Path):
    """A Sweep over the saved results, as `Sweep.run` holds it after its barrier (no model loaded)."""
    from rewind import sweep

    record, _ = sweep.load(directory)
    spec = sweep.SweepSpec(**record["spec"])
    log = sweep.ResultsLog(directory / sweep.RESULTS_FILE)
    steps = sorted({int(r["alpha"]) for r in log.records(record["run"]) if r["path"] == "train"})
    # The training run's checkpoint dirs are not shipped with the study: the ones its train points came from.
    spec.checkpoint_dirs = lambda: [Path(f"checkpoint-{s}") for s in steps]
    s = sweep.Sweep.__new__(sweep.Sweep)
    s.spec, s.out, s.log, s.run_id, s.path_names = spec, out, log, record["run"], record["paths"]
    s.update = SimpleNamespace(method=SimpleNamespace(name=record["method"]))
    return s


def _scores(row: dict | None) -> list[float] | None:
    return None if row is None else [row["target"], row["general"]]


def _rules(s, points) -> dict:
    from rewind import pareto, sweep

    tests = {r["key"]: r for r in s.scored(points, sweep.TEST)}
    chosen, rule = {}, s.spec.select
    for name in pareto.RULES:
        s.spec.select = name
        row = s.select(points)["selected"]
        chosen[name] = {"key": row["key"], "validation": _scores(row), "test": _scores(tests.get(row["key"]))}
    s.spec.select = rule
    return chosen


def _search(s, points, report: dict) -> dict:
    """The search's choices recomputed from the logged scores: start, compass replayed, selection."""
    from rewind import pareto, search, sweep

    rows = {r["key"]: r for r in s.scored(points, sweep.VALIDATION)}
    base = search._scored(rows["base@0"])
    value = pareto.objective(s.spec.select, base, s.spec.tolerance, s.spec.weight)
    path = report["path"]
    uniform = [search._scored(r) for r in rows.values() if not r["layers"] and r["path"] in (path, "base", "final")]
    start = rows[pareto.select(uniform, base, s.spec.select, s.spec.tolerance, s.spec.weight).key]
    start_alpha = {"base@0": 0.0, "final@1": 1.0}.get(start["key"], start["alpha"])
    groups, known, seen = report["groups"], {k for k, r in rows.items() if not r["layers"]}, []

    def point_of(group_alphas):
        return search._point(path, start_alpha, tuple(group_alphas[g] for g, m in enumerate(groups) for _ in m))

    def evaluate(group_alphas):
        key = point_of(group_alphas).key
        seen.append(key)
        return value(search._scored(rows[key]))

    def new() -> int:  # evaluations the search paid for: points first met in it
        return len({k for k in seen if k not in known})

    spec = report["search"]
    best = search.compass(
        evaluate, (start_alpha,) * len(groups), spec["step"], spec["min_step"], budget=lambda: new() < spec["budget"]
    )
    return {
        "start": start["key"],
        "searched": point_of(best).key,
        "history": seen,
        "evaluations": new(),
        "selected": s.select(points)["selected"]["key"],
    }


def record(directory: Path) -> dict:
    """What the code reports for the sweep in `directory` (copied first: reading a log may repair it)."""
    from rewind import sweep

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "sweep"
        shutil.copytree(directory, copy)
        s = _sweep(copy, Path(tmp))
        points = s.known_points(sweep.plan_points(s.spec, s.path_names))
        summary = s.summarize(points, s.select(points)["selected"]["key"])
        out = {"rules": _rules(s, points), "summary": summary, "table": sweep.table(summary).splitlines()}
        if (copy / "search.json").is_file():
            out["search"] = _search(s, points, json.loads((copy / "search.json").read_text()))
    return out


def main() -> None:
    data = {d.name: record(d) for d in sorted(SWEEPS.iterdir()) if (d / "sweep.json").is_file()}
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {DATA.relative_to(ROOT)}: {', '.join(data)}", file=sys.stderr)


if __name__ == "__main__":
    main()
