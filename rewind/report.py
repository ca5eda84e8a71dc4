"""What a sweep reports: each point's scores, the frontier, the selection, summary.json, the table and pareto.png.

A `Report` is built from what a sweep wrote: its record (sweep.json) and its run's lines of results.jsonl. It needs
no model, so `Report.read(out)` reports any sweep dir, and the sweep and `rewind search` report through the same
code. A report computes each split's rows, and the selection, once; `extend` adds lines and drops only what they
change.

Scores: a point's target (general) score is the mean over the target (general) suites of each suite's mean task
score, 0-100, higher is better; a row (results.Scored) is one point's scores on one split. Selection: a `Rule` is
a rule's name and settings (--select or --objective, --tolerance, --weight); it decides on validation rows only,
and the test split reports the points it chose. The rules themselves are pure functions in pareto.py over rows; with
per-item scores the scalar rules decide on paired intervals instead (stats.select: the final adapter is left only
for a point confidently better), `Rule.decide` handing them the bootstrap and `Selection` carrying the verdict.

summary.json (one object; scores 0-100; "row" below means {key, path, alpha, layers, target, general, seconds,
"pass@K" for each K of --pass-k, ran: grid, point or grid+point}, a point's validation scores named as in
results.jsonl, see results.py):
- run: the run id; base: the base's hub id (or dir); adapter; method; paths: the paths swept, natural first;
- rule, tolerance: the selection rule and its tolerance; layers: the --layers schedule of every path, or null;
  cayley_scale;
- selected, base_point, final_point: a row plus "test": the same row on the test split (null if not scored);
- frontier: the keys of the Pareto-optimal points (validation); points: a row per evaluated point, in sweep order
  (base, final, each path's alphas, training checkpoints, then searched points in the order they were found);
- metrics: {"target" | "general": {task: the lm-eval metric its score is}}.
Where the sweep has per-item scores (items.jsonl; older sweeps have none and report as they did), a row also has
target_ci and general_ci ([low, high]: paired bootstrap, stratified by task, at --confidence), and the summary
- confidence; verdict: why the selected point, with numbers (stats.select's reason);
- evidence: the selected point's paired differences {"base" | "final": {"target" | "general": {delta, ci}}};
- noise_floor (where the base was evaluated twice, as a sweep on CUDA does): {point, flips: {task: items scored
  differently the second time}, items: {task: items}}.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from . import files, items, models, pareto, report_plots, stats
from .errors import RewindError
from .evaluate.harness import suite_means
from .results import (
    BASE,
    FINAL,
    RESULTS_FILE,
    TEST,
    VALIDATION,
    Point,
    ResultsLog,
    Scored,
    compact,
    known,
    plan,
    read_record,
)

SUMMARY_FILE, PLOT_FILE = "summary.json", "pareto.png"
AXES = items.AXES


def scores(records: list[dict], target: list[str], general: list[str]) -> tuple[float, float]:
    """(target, general) of one point's lines on one split. A suite without a score is an error: a mean over what
    is left would compare points on different tasks."""
    means = suite_means((r["suite"], r["score"]) for r in records)

    def role_score(suites: list[str]) -> float:
        for suite in suites:
            if suite not in means:
                point, split = records[0]["point"], records[0]["split"]
                raise RewindError(
                    f"point {point}, {split}: suite {suite} has no score in results.jsonl; rerun "
                    f"the sweep to evaluate it"
                )
        return sum(means[s] for s in suites) / len(suites)

    return role_score(target), role_score(general)


def pass_scores(records: list[dict], ks: list[int]) -> dict[str, float]:
    """{"pass@k": mean over the point's sampled generation tasks, 0-100} for each k asked for."""
    sampled = [r for r in records if r["role"] == "pass@k"]
    if not ks or not sampled:
        return {}
    return {
        f"pass@{k}": 100 * sum(r["metrics"][f"pass@{k},pass_at_k"] for r in sampled) / len(sampled) for k in sorted(ks)
    }


def ran_as(records: list[dict]) -> str:
    """How a point's tasks ran: "grid" (one batched pass with other points), "point" (alone), or "grid+point"."""
    ways = {r.get("ran", "point") for r in records}
    return "+".join(way for way in ("grid", "point") if way in ways)


@dataclass(frozen=True)
class Rule:
    """How one point is chosen: a rule of pareto.RULES and its settings."""

    name: str = "max-target-within"
    tolerance: float = 1.0
    weight: float = 0.5

    def select(self, rows: list[Scored], base: Scored) -> Scored:
        return pareto.select(rows, base, self.name, self.tolerance, self.weight)

    def decide(
        self, rows: list[Scored], base: Scored, final: Scored, boot: stats.Bootstrap | None
    ) -> tuple[Scored, stats.Verdict | None]:
        """The chosen row, on paired intervals (stats.select: the final kept unless a point is confidently better)
        where the sweep has per-item scores (`boot`) and the rule ranks single points; else on the scores alone."""
        if boot is None or self.name not in pareto.SCALAR_RULES:
            return self.select(rows, base), None
        verdict = stats.select(boot, self.name, base.key, final.key, self.tolerance, self.weight)
        return next(r for r in rows if r.key == verdict.chosen), verdict

    def objective(self, base: Scored | None):
        """What `select` maximises, for one row (scalar rules only; `base` None: only check that it is one)."""
        return pareto.objective(self.name, base, self.tolerance, self.weight)


@dataclass(frozen=True)
class Selection:
    """The selection over the validation rows: the chosen row, and the frontier and end points it was chosen on;
    with per-item scores, the paired bootstrap and (scalar rules) the verdict it was decided by."""

    rule: Rule
    selected: Scored
    frontier: list[Scored]
    base: Scored
    final: Scored
    boot: stats.Bootstrap | None = None
    verdict: stats.Verdict | None = None

    def evidence(self) -> dict | None:
        """{"base" | "final": {"target" | "general": {"delta", "ci"}}}: the selected point's paired differences."""
        if self.verdict is not None:
            return self.verdict.evidence
        if self.boot is None:
            return None
        return {
            name: {axis: _delta(self.boot.diff(self.selected.key, ref.key, axis)) for axis in AXES}
            for name, ref in (("base", self.base), ("final", self.final))
        }

    def reason(self) -> str | None:
        """Why the selected point, with numbers (None without per-item scores)."""
        if self.verdict is not None:
            return self.verdict.reason
        if self.boot is None:
            return None
        return f"{self.selected.key}: chosen by {self.rule.name} on the scores (it ranks the frontier, not intervals)"


def _delta(diff: stats.Interval) -> dict:
    return {"delta": diff.estimate, "ci": diff.ci}


class Report:
    def __init__(self, record: dict, records: list[dict], item_lines: list[dict] = ()):
        """`record`: sweep.json's object; `records`: the lines of its run in results.jsonl; `item_lines`: in
        items.jsonl (none: a sweep from before it, reported without intervals)."""
        self.record, self.spec = record, record["spec"]
        self.rule = Rule(self.spec["select"], self.spec["tolerance"], self.spec["weight"])
        self.confidence = float(self.spec.get("confidence", 0.9))
        self._records, self._items = list(records), list(item_lines)
        self._rows: dict[str, list[Scored]] = {}
        self._boots: dict[str, stats.Bootstrap | None] = {}
        self._selection: Selection | None = None

    @classmethod
    def read(cls, out: str | Path) -> Report:
        """The report of the sweep in dir `out`, from its sweep.json, results.jsonl and items.jsonl."""
        record = read_record(Path(out))
        logged = items.ItemsLog(Path(out) / items.ITEMS_FILE, repair=False).records(record["run"])
        return cls(record, ResultsLog(Path(out) / RESULTS_FILE).records(record["run"]), logged)

    def extend(self, records: list[dict], item_lines: list[dict] = ()) -> None:
        """Add lines of the run (new points or splits); what they change is computed again when next asked."""
        self._records += records
        self._items += item_lines
        for split in {r["split"] for r in [*records, *item_lines]}:
            self._rows.pop(split, None)
            self._boots.pop(split, None)
            if split == VALIDATION:
                self._selection = None

    def points(self) -> list[Point]:
        """Every point of the sweep in its order: the planned ones, then the ones found (search)."""
        steps = sorted({Point.of(r).step for r in self._records if r["path"] == "train"})
        return known(plan(self.spec["alphas"], self.record["paths"], steps), self._records)

    def rows(self, split: str = VALIDATION) -> list[Scored]:
        """A row for each point scored on `split`, in sweep order, with intervals where there are per-item scores."""
        if split not in self._rows:
            mine: dict[str, dict[tuple, dict]] = {}
            for r in self._records:  # a task scored twice (its items were lost, so again): the later line
                if r["split"] == split:
                    mine.setdefault(r["point"], {})[r["suite"], r["task"]] = r
            rows = [self._scored(p, list(mine[p.key].values())) for p in self.points() if p.key in mine]
            boot = self._bootstrap(split, [r.key for r in rows])
            if boot is not None:
                rows = [replace(r, **{f"{a}_ci": boot.interval(r.key, a).ci for a in AXES}) for r in rows]
            self._rows[split] = rows
        return self._rows[split]

    def bootstrap(self, split: str = VALIDATION, keys: list[str] | None = None) -> stats.Bootstrap | None:
        """The paired bootstrap of `split`'s points (items.bootstrap), or of the points `keys` only; None without
        per-item scores for them all."""
        if keys is None:
            return self._bootstrap(split, [r.key for r in self.rows(split)])
        return self._resample(split, keys)

    def _bootstrap(self, split: str, keys: list[str]) -> stats.Bootstrap | None:
        """`split`'s bootstrap over all its rows, computed once (until lines of that split are added)."""
        if split not in self._boots:
            self._boots[split] = self._resample(split, keys)
        return self._boots[split]

    def _resample(self, split: str, keys: list[str]) -> stats.Bootstrap | None:
        if not self._items:
            return None
        spec = self.spec
        return items.bootstrap(
            self._items, split, list(dict.fromkeys(keys)), spec["target"], spec["general"], self.confidence
        )

    def _scored(self, point: Point, records: list[dict]) -> Scored:
        target, general = scores(records, self.spec["target"], self.spec["general"])
        passes = pass_scores(records, self.spec.get("pass_k") or [])
        return Scored(point, target, general, records[0]["point_seconds"], passes, ran_as(records))

    def row(self, point: Point, split: str = VALIDATION) -> Scored | None:
        return next((r for r in self.rows(split) if r.key == point.key), None)

    def _end(self, point: Point) -> Scored:
        row = self.row(point)
        if row is None:
            raise RewindError(f"point {point.key} has no validation score in results.jsonl; rerun the sweep")
        return row

    @property
    def selection(self) -> Selection:
        if self._selection is None:
            rows, base, final, boot = self.rows(VALIDATION), self._end(BASE), self._end(FINAL), self.bootstrap()
            chosen, verdict = self.rule.decide(rows, base, final, boot)
            self._selection = Selection(self.rule, chosen, pareto.frontier(rows), base, final, boot, verdict)
        return self._selection

    def entry(self, row: Scored) -> dict:
        """A validation row with its test row (or None) as "test"."""
        test = self.row(row.point, TEST)
        return {**row.row(), "test": test.row() if test else None}

    def metrics(self) -> dict[str, dict[str, str]]:
        """{"target" | "general": {task: the lm-eval metric its score is}}, as the base point was scored."""
        out: dict[str, dict[str, str]] = {}
        for r in self._records:
            if r["point"] == BASE.key and r["split"] == VALIDATION and r["role"] in ("target", "general"):
                out.setdefault(r["role"], {})[r["task"]] = r["metric"]
        return out

    def summary(self) -> dict:
        """summary.json's object (its schema: the module docstring)."""
        chosen, spec = self.selection, self.spec
        return {
            "run": self.record["run"],
            "base": models.hub_id(spec["base"]),
            "adapter": str(spec["adapter"]),
            "method": self.record["method"],
            "paths": self.record["paths"],
            "rule": self.rule.name,
            "tolerance": self.rule.tolerance,
            "layers": spec["layers"],
            "cayley_scale": spec["cayley_scale"],
            "selected": self.entry(chosen.selected),
            "base_point": self.entry(chosen.base),
            "final_point": self.entry(chosen.final),
            "frontier": [r.key for r in chosen.frontier],
            "points": [r.row() for r in self.rows(VALIDATION)],
            "metrics": self.metrics(),
        } | self._evidence()

    def _evidence(self) -> dict:
        """With per-item scores: the confidence, the verdict and the selected point's evidence (else nothing, so an
        older sweep's summary stays as it was)."""
        chosen = self.selection
        if chosen.boot is None:
            return {}
        out = {"confidence": self.confidence, "verdict": chosen.reason(), "evidence": chosen.evidence()}
        floor = items.noise_floor(self._items, BASE.key, VALIDATION)
        return out | ({"noise_floor": floor} if floor else {})

    def write(self, out: str | Path) -> dict:
        """summary.json and pareto.png into dir `out`; returns the summary."""
        summary = self.summary()
        files.write_json(Path(out) / SUMMARY_FILE, summary)
        report_plots.frontier_png(summary, Path(out) / PLOT_FILE)
        return summary


def table(summary: dict) -> str:
    """The printed table: one row per point, deltas against the base, frontier and selection marked; with
    per-item scores, each score's interval, the verdict and the selected point's paired differences."""
    base = summary["base_point"]
    passes = [key for key in base if key.startswith("pass@")]
    ci = "target_ci" in base
    # Which metric each score is (older summaries did not record it).
    lines = [
        f"{role:<8} {', '.join(f'{task} {metric}' for task, metric in tasks.items())}"
        for role, tasks in summary.get("metrics", {}).items()
    ]
    width = 16 * ci
    lines += [
        f"{'path':<10} {'alpha':>6} {'target':>{7 + width}} {'general':>{8 + width}} {'d_target':>9} {'d_general':>10}"
        + "".join(f" {key:>8}" for key in passes)
        + f" {'ran':>10}  front",
        "-" * (73 + 2 * width + 9 * len(passes)),
    ]
    lines += [_table_row(r, base, passes, summary) for r in summary["points"]]
    sel = summary["selected"]
    lines.append("")
    layers = f" layers={compact(sel['layers'])}" if sel.get("layers") else ""
    lines.append(f"selected ({summary['rule']}, validation): {sel['path']} alpha={sel['alpha']:g}{layers}")
    lines += _verdict_lines(summary)
    for name, row in [("base", base), ("final", summary["final_point"]), ("selected", sel)]:
        test = row.get("test")
        if test:
            scores = "  ".join(f"{axis} {test[axis]:6.2f}{_ci(test.get(f'{axis}_ci'))}" for axis in AXES)
            lines.append(f"  test  {name:<9} {scores}")
    return "\n".join(lines)


def _ci(interval: list[float] | None) -> str:
    return f" [{interval[0]:6.2f},{interval[1]:6.2f}]" if interval else ""


def _verdict_lines(summary: dict) -> list[str]:
    """The verdict and the selected point's paired differences at the summary's confidence (none without)."""
    if "verdict" not in summary:
        return []
    lines = [f"verdict ({summary['confidence']:g} confidence): {summary['verdict']}"]
    for ref, diffs in summary["evidence"].items():
        parts = "; ".join(f"{axis} {stats.Interval(d['delta'], *d['ci'])}" for axis, d in diffs.items())
        lines.append(f"  selected - {ref:<5} {parts}")
    floor = summary.get("noise_floor")
    if floor:
        flips, n = sum(floor["flips"].values()), sum(floor["items"].values())
        lines.append(
            f"noise floor: {floor['point']} evaluated twice, {flips} of {n} validation items scored differently"
        )
    return lines


def _table_row(r: dict, base: dict, passes: list[str], summary: dict) -> str:
    mark = ("*" if r["key"] in summary["frontier"] else "") + (
        " <- selected" if r["key"] == summary["selected"]["key"] else ""
    )
    if r.get("layers"):
        mark += f" layers {compact(r['layers'])}"
    name = r["path"] + ("+L" if r.get("layers") else "")
    return (
        f"{name:<10} {r['alpha']:>6g} {r['target']:>7.2f}{_ci(r.get('target_ci'))} "
        f"{r['general']:>8.2f}{_ci(r.get('general_ci'))} "
        f"{r['target'] - base['target']:>+9.2f} {r['general'] - base['general']:>+10.2f}"
        + "".join(f" {r[key]:>8.2f}" if key in r else f" {'-':>8}" for key in passes)
        + f" {r.get('ran') or '-':>10}  {mark}"
    )
