"""What rewind reports for each of the study's saved sweeps (docs/study/sweeps/*), without a model.

`python tests/study_selections.py` rewrites tests/data/study_selections.json; test_study_selections.py checks that
the code of the day reports the same. The file was written by main at 4d016d3, before the sweep was split into
session, results and report (by this script as it was then: `git log -p tests/study_selections.py`): it is the
record of what the old code reported. Rewriting it is for a change that means to change what a sweep reports.

Per sweep: the selected point under every rule (with the sweep's tolerance and weight) and its validation and test
scores, the summary a sweep writes at the end (selection, frontier, every point's scores), the printed table, and
for a sweep with a search.json: the best uniform start, the search's own choice (its rounds replayed over the
logged scores, as far as the study logged the points they ask for: `unlogged` names the first round's points it
did not) and the selection over all points.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "docs" / "study" / "sweeps"
DATA = Path(__file__).resolve().parent / "data" / "study_selections.json"


def _scores(row) -> list[float] | None:
    return None if row is None else [row.target, row.general]


def _rules(report) -> dict:
    from rewind import pareto
    from rewind.results import TEST

    chosen = {}
    for name in pareto.RULES:
        row = dataclasses.replace(report.rule, name=name).select(report.rows(), report.selection.base)
        chosen[name] = {"key": row.key, "validation": _scores(row), "test": _scores(report.row(row.point, TEST))}
    return chosen


class Unlogged(Exception):
    """The search asks for points the study never evaluated (args[0]: their keys): the replay ends there."""


class _Replay:
    """A session whose evaluations are the logged ones: the search runs again over what it found then."""

    def __init__(self, records: list[dict]):
        self.records = records

    def evaluate(self, points, split) -> list[dict]:
        keys = {p.key for p in points}
        logged = [r for r in self.records if r["point"] in keys and r["split"] == split]
        missing = sorted(keys - {r["point"] for r in logged})
        if missing:
            raise Unlogged(missing)
        return logged

    def take_items(self) -> list[dict]:
        return []  # the study's sweeps predate items.jsonl


def _search(directory: Path, report, records: list[dict]) -> dict:
    """The search's choices recomputed from the logged scores: its start, its climb replayed, the selection."""
    from rewind import search
    from rewind.report import Report

    found = json.loads((directory / search.SEARCH_FILE).read_text())
    before = Report(report.record, [r for r in records if not r.get("layers")])  # the sweep the search began on
    start = search.best_uniform(before, found["path"])
    climb = search.Climb(_Replay(records), before, found["path"], start.point.alpha, found["groups"])
    out = {}
    try:
        out["searched"] = climb.run(search.SearchSpec(**found["search"])).key
    except Unlogged as exc:
        out["unlogged"] = exc.args[0]
    return out | {
        "start": start.key,
        "history": [h["key"] for h in climb.history],
        "evaluations": climb.spent,
        "selected": report.selection.selected.key,
    }


def record(directory: Path) -> dict:
    """What the code reports for the sweep in `directory` (copied first: reading a log may repair it)."""
    from rewind.report import Report, table
    from rewind.results import RESULTS_FILE, ResultsLog

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "sweep"
        shutil.copytree(directory, copy)
        report = Report.read(copy)
        summary = report.summary()
        out = {"rules": _rules(report), "summary": summary, "table": table(summary).splitlines()}
        if (copy / "search.json").is_file():
            records = ResultsLog(copy / RESULTS_FILE).records(report.record["run"])
            out["search"] = _search(copy, report, records)
    return out


def main() -> None:
    data = {d.name: record(d) for d in sorted(SWEEPS.iterdir()) if (d / "sweep.json").is_file()}
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {DATA.relative_to(ROOT)}: {', '.join(data)}", file=sys.stderr)


if __name__ == "__main__":
    main()
