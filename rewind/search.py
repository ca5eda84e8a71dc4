"""`rewind search`: per-layer-group alphas chosen on the validation split, starting from the best uniform alpha.

The paper leaves open how to pick per-layer rewinding magnitudes. We climb the sweep's own selection objective
(`pareto.objective`) with a compass search over contiguous layer groups: try each group's alpha one step in the
direction that last paid off (down at first), then the other, keep the first move that improves, halve the step when
none does. It needs no gradients, copes with the step-shaped scores of a finite evaluation set, and is deterministic;
alphas sit on a grid of the smallest step, so a candidate met twice is evaluated once.

Every candidate is one more point of the sweep (same results.jsonl, same run id), so the sweep's table and
pareto.png show uniform and searched points together, and `rewind export --from` exports the chosen schedule.
Validation picks; the test split reports (chosen schedule, best uniform alpha, final adapter, base).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from . import files, pareto
from .errors import RewindError
from .sweep import TEST, VALIDATION, PointSpec, Sweep, plan_points

SEARCH_FILE = "search.json"


@dataclass
class SearchSpec:
    path: str | None = None  # one of the sweep's paths; default its first (the natural path)
    groups: str = "4"  # contiguous layer groups: a number, or "layer" for one group per layer
    budget: int = 24  # new validation evaluations at most (points already in results.jsonl are free)
    step: float = 0.2  # first move of a group's alpha
    min_step: float = 0.05  # stop once the step would fall below this


def layer_groups(num_layers: int, groups: str | int) -> list[list[int]]:
    """Contiguous groups from the input side; sizes differ by at most one (the first groups get the extra)."""
    if str(groups) == "layer":
        count = num_layers
    else:
        try:
            count = int(groups)
        except ValueError:
            raise RewindError(f"--groups {groups!r}: give a number of layer groups or 'layer'") from None
        if not 1 <= count <= num_layers:
            raise RewindError(f"--groups {count}: the model has {num_layers} layers; give 1..{num_layers} or 'layer'")
    size, extra = divmod(num_layers, count)
    out, start = [], 0
    for g in range(count):
        end = start + size + (g < extra)
        out.append(list(range(start, end)))
        start = end
    return out


def compass(
    value: Callable[[tuple[float, ...]], tuple],
    start: tuple[float, ...],
    step: float,
    min_step: float,
    lo: float = 0.0,
    hi: float = 1.0,
    budget: Callable[[], bool] = lambda: True,
) -> tuple[float, ...]:
    """Maximise `value` over group alphas in [lo, hi]; `budget()` false stops it. Returns the best point found."""
    grid = min_step

    def snap(a: float) -> float:
        return round(min(hi, max(lo, round(a / grid) * grid)), 6)

    best, best_value = start, value(start)
    first = [-1] * len(start)  # rewinding (down) first; then whichever direction last paid off, per group
    while step >= min_step - 1e-12 and budget():
        moved = False
        for g in range(len(best)):
            for direction in (first[g], -first[g]):
                candidate = best[:g] + (snap(best[g] + direction * step),) + best[g + 1 :]
                if candidate == best or not budget():
                    continue
                v = value(candidate)
                if v > best_value:
                    best, best_value, moved, first[g] = candidate, v, True, direction
                    break
        if not moved:
            step /= 2
    return best


class Search:
    """Runs (or resumes) the sweep, then searches per-layer-group alphas on its resident model."""

    def __init__(self, sweep: Sweep, spec: SearchSpec):
        if sweep.spec.layers is not None:
            raise RewindError(
                "search starts from a uniform sweep; this sweep applies --layers "
                f"{sweep.spec.layers} on every path (sweep again without --layers)"
            )
        pareto.objective(sweep.spec.select, pareto.Scored("", 0, 0))  # refuses knee before any loading
        if spec.budget < 1:
            raise RewindError(f"--budget {spec.budget}: give at least 1 evaluation")
        if not 0 < spec.min_step <= spec.step <= 1:
            raise RewindError("--step must lie in (0, 1] and be at least --min-step")
        if str(spec.groups) != "layer" and not (str(spec.groups).isdigit() and int(spec.groups) >= 1):
            # the model's layer count bounds it from above once loaded (layer_groups)
            raise RewindError(f"--groups {spec.groups}: give a number of layer groups (at least 1) or 'layer'")
        self.sweep, self.spec = sweep, spec

    def run(self, progress: bool = True) -> dict:
        sweep = self.sweep
        sweep.run(progress)
        if sweep.rank != 0:
            return {}
        path = self.spec.path or sweep.path_names[0]
        if path not in sweep.path_names:
            raise RewindError(f"--path {path}: the sweep has paths {', '.join(sweep.path_names)}")
        num_layers = int(sweep.model.config.num_hidden_layers)
        groups = layer_groups(num_layers, self.spec.groups)
        planned = sweep.known_points(_planned(sweep))
        rows = {r["key"]: r for r in sweep.scored(planned, VALIDATION)}
        base = _scored(rows["base@0"])
        value = pareto.objective(sweep.spec.select, base, sweep.spec.tolerance, sweep.spec.weight)

        uniform = [_scored(r) for r in rows.values() if not r["layers"] and r["path"] in (path, "base", "final")]
        start_row = rows[pareto.select(uniform, base, sweep.spec.select, sweep.spec.tolerance, sweep.spec.weight).key]
        start_alpha = {"base@0": 0.0, "final@1": 1.0}.get(start_row["key"], start_row["alpha"])

        spent, history = 0, []
        bar = tqdm(total=self.spec.budget, desc="search", unit="eval", disable=not progress)

        def point_of(group_alphas: tuple[float, ...]) -> PointSpec:
            return _point(
                path, start_alpha, tuple(group_alphas[g] for g, members in enumerate(groups) for _ in members)
            )

        def evaluate(group_alphas: tuple[float, ...]) -> tuple:
            nonlocal spent
            point = point_of(group_alphas)
            if point.key not in rows:
                sweep.evaluate(point, VALIDATION)
                spent += 1
                bar.update(1)
                rows[point.key] = sweep.scored([point], VALIDATION)[0]
            row = rows[point.key]
            history.append(
                {"key": point.key, "groups": list(group_alphas), "target": row["target"], "general": row["general"]}
            )
            return value(_scored(row))

        best = compass(
            evaluate,
            (start_alpha,) * len(groups),
            self.spec.step,
            self.spec.min_step,
            budget=lambda: spent < self.spec.budget,
        )
        bar.close()

        points = sweep.known_points(_planned(sweep))
        chosen_key = point_of(best).key
        selection = sweep.select(points)  # over every evaluated point, uniform or searched
        sweep.evaluate_test(points, ["base@0", "final@1", start_row["key"], chosen_key, selection["selected"]["key"]])
        summary = sweep.summarize(points, selection["selected"]["key"])
        tests = {r["key"]: r for r in sweep.scored(points, TEST)}
        report = {
            "run": sweep.run_id,
            "path": path,
            "rule": sweep.spec.select,
            "groups": groups,
            "search": asdict(self.spec),
            "evaluations": spent,
            "start": start_row["key"],
            "best_uniform": {**start_row, "test": tests.get(start_row["key"])},
            "searched": {**rows[chosen_key], "test": tests.get(chosen_key)},
            "final": {**rows["final@1"], "test": tests.get("final@1")},
            "base": {**rows["base@0"], "test": tests.get("base@0")},
            "selected": summary["selected"]["key"],
            "history": history,
        }
        files.write_json(sweep.out / SEARCH_FILE, report)
        return report


def _planned(sweep: Sweep) -> list[PointSpec]:
    return plan_points(sweep.spec, sweep.path_names)


def _point(path: str, alpha: float, layers: tuple[float, ...]) -> PointSpec:
    if any(a != alpha for a in layers):
        return PointSpec(path, alpha, layers)
    # Every layer at the start alpha: that uniform point, under the key the sweep gave it.
    if alpha == 0.0:
        return PointSpec("base", 0.0)
    if alpha == 1.0:
        return PointSpec("final", 1.0)
    return PointSpec(path, alpha)


def _scored(row: dict) -> pareto.Scored:
    return pareto.Scored(row["key"], row["target"], row["general"])


def report_table(report: dict) -> str:
    """Validation and test scores of the searched schedule against the best uniform alpha, final and base."""
    lines = [
        f"search on {report['path']} ({report['rule']}): {report['evaluations']} new validation evaluations, "
        f"{len(report['groups'])} layer groups, start {report['start']}",
        f"{'point':<12} {'val target':>10} {'val general':>11} {'test target':>11} {'test general':>12}  key",
    ]
    for name in ("base", "final", "best_uniform", "searched"):
        row = report[name]
        test = row.get("test") or {}
        lines.append(
            f"{name:<12} {row['target']:>10.2f} {row['general']:>11.2f} "
            f"{test.get('target', float('nan')):>11.2f} {test.get('general', float('nan')):>12.2f}  "
            f"{row['key']}"
        )
    lines.append(f"selected on validation (exported by `rewind export --from`): {report['selected']}")
    return "\n".join(lines)
