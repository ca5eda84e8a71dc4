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

from . import files, stats
from . import sweep as sweeper
from .errors import RewindError
from .report import Report, Rule
from .results import SEARCH_FILE, VALIDATION, Point, Scored, search_rows
from .session import Session


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
    improves: Callable[[tuple[float, ...], tuple[float, ...]], bool] | None = None,
) -> tuple[float, ...]:
    """Maximise `value` over group alphas in [lo, hi]; `budget()` false stops it. Returns the best point found.
    `improves(candidate, best)`, called once the candidate's value was computed, decides a move where given (a
    paired test), instead of the candidate's value being the greater."""
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
                if improves(candidate, best) if improves else v > best_value:
                    best, best_value, moved, first[g] = candidate, v, True, direction
                    break
        if not moved:
            step /= 2
    return best


class Search:
    """Runs (or resumes) the sweep of a session, then searches per-layer-group alphas on its resident model."""

    def __init__(self, session: Session, spec: SearchSpec):
        swept = session.spec
        if swept.layers is not None:
            raise RewindError(
                "search starts from a uniform sweep; this sweep applies --layers "
                f"{swept.layers} on every path (sweep again without --layers)"
            )
        Rule(swept.select, swept.tolerance, swept.weight).objective(None)  # refuses knee before any loading
        if spec.budget < 1:
            raise RewindError(f"--budget {spec.budget}: give at least 1 evaluation")
        if not 0 < spec.min_step <= spec.step <= 1:
            raise RewindError("--step must lie in (0, 1] and be at least --min-step")
        if str(spec.groups) != "layer" and not (str(spec.groups).isdigit() and int(spec.groups) >= 1):
            # the model's layer count bounds it from above once loaded (layer_groups)
            raise RewindError(f"--groups {spec.groups}: give a number of layer groups (at least 1) or 'layer'")
        self.session, self.spec = session, spec

    def run(self, progress: bool = True) -> tuple[dict, dict]:
        """(summary.json's object, search.json's) on rank 0; ({}, {}) on the other ranks."""
        try:
            return self._run(progress)
        finally:
            sweeper.finish(self.session)

    def _run(self, progress: bool) -> tuple[dict, dict]:
        from . import report_html

        session = self.session
        report = sweeper.evaluate(session, progress)
        if report is None:
            return {}, {}
        sweeper.conclude(session, report)  # the sweep's own summary first, as `rewind sweep` writes it
        path = self.spec.path or session.path_names[0]
        if path not in session.path_names:
            raise RewindError(f"--path {path}: the sweep has paths {', '.join(session.path_names)}")
        groups = layer_groups(session.num_layers, self.spec.groups)
        start = best_uniform(report, path)
        climb = Climb(session, report, path, start.point.alpha, groups)
        session.bar.set_description("search")
        session.bar.cover(self.spec.budget * session.tasks)  # at most; the bar closes at what was spent
        chosen = climb.run(self.spec)
        summary = sweeper.conclude(session, report, [start.point, chosen])
        found = {
            "run": session.run_id,
            "path": path,
            "rule": report.rule.name,
            "groups": groups,
            "search": asdict(self.spec),
            "evaluations": climb.spent,
            "paired": report.bootstrap() is not None,  # moves taken on paired intervals (else on the scores)
            "start": start.key,
            "best_uniform": report.entry(start),
            "searched": report.entry(report.row(chosen)),
            "final": report.entry(report.selection.final),
            "base": report.entry(report.selection.base),
            "selected": summary["selected"]["key"],
            "history": climb.history,
        }
        files.write_json(session.out / SEARCH_FILE, found)
        report_html.write(session.out)  # again, now with the search's table
        return summary, found


def best_uniform(report: Report, path: str) -> Scored:
    """Where the search starts: the rule's choice among the uniform points of `path`, the base and the final (on
    paired intervals where the sweep has per-item scores, as the sweep's own selection)."""
    rows = report.rows()
    uniform = [
        r for r in rows if r.point.kind in ("base", "final") or (r.point.kind == "path" and r.point.path == path)
    ]
    boot = report.bootstrap(VALIDATION, [r.key for r in uniform])
    return report.rule.decide(uniform, report.selection.base, report.selection.final, boot)[0]


def confidently_better(boot: stats.Bootstrap, rule: Rule, new: str, old: str, base: str) -> bool:
    """Whether point `new` beats the incumbent `old` under `rule`, paired, at the bootstrap's confidence.

    max-sum, weighted: the lower bound of new - old on the rule's objective is above 0. max-target-within: a point
    is feasible when its general vs the base is confidently within -tolerance (the base always is); a feasible
    point beats an infeasible one, two feasible ones compare on target and two infeasible ones on general (so a
    search can climb back), each confidently.
    """
    _, axis = stats.objective_axis(rule.name, rule.weight)
    if rule.name != "max-target-within":
        return stats.confidently_above(boot.diff(new, old, axis))

    def feasible(point: str) -> bool:
        return point == base or boot.diff(point, base, "general").low >= -rule.tolerance

    if feasible(new) != feasible(old):
        return feasible(new)
    return stats.confidently_above(boot.diff(new, old, "target" if feasible(new) else "general"))


class Climb:
    """The compass search over one path's layer groups, each candidate a point scored through the session."""

    def __init__(self, session: Session, report: Report, path: str, alpha: float, groups: list[list[int]]):
        self.session, self.report, self.path, self.alpha, self.groups = session, report, path, alpha, groups
        self.value = report.rule.objective(report.selection.base)
        self.spent, self.history = 0, []

    def point(self, group_alphas: tuple[float, ...]) -> Point:
        layers = [group_alphas[g] for g, members in enumerate(self.groups) for _ in members]
        return Point.at(self.path, self.alpha, layers)

    def run(self, spec: SearchSpec) -> Point:
        def evaluate(group_alphas: tuple[float, ...]) -> tuple:
            point = self.point(group_alphas)
            if self.report.row(point) is None:  # points already scored (the sweep's, an earlier search's) are free
                self.report.extend(self.session.evaluate([point], VALIDATION), self.session.take_items())
                self.spent += 1
            row = self.report.row(point)
            self.history.append(
                {"key": point.key, "groups": list(group_alphas), "target": row.target, "general": row.general}
            )
            return self.value(row)

        start = (self.alpha,) * len(self.groups)
        budget = lambda: self.spent < spec.budget  # noqa: E731
        # Where the sweep has per-item scores a move needs a paired win; else compass compares the values.
        improves = self.improves if self.report.bootstrap() is not None else None
        return self.point(compass(evaluate, start, spec.step, spec.min_step, budget=budget, improves=improves))

    def improves(self, candidate: tuple[float, ...], best: tuple[float, ...]) -> bool:
        """Whether the candidate is confidently better than the incumbent (paired, at the sweep's confidence)."""
        new, old, base = self.point(candidate).key, self.point(best).key, self.report.selection.base.key
        boot = self.report.bootstrap(VALIDATION, [new, old, base])
        return confidently_better(boot, self.report.rule, new, old, base)


def report_table(report: dict) -> str:
    """Validation and test scores of the searched schedule against the best uniform alpha, final and base."""
    lines = [
        f"search on {report['path']} ({report['rule']}): {report['evaluations']} new validation evaluations, "
        f"{len(report['groups'])} layer groups, start {report['start']}",
        f"{'point':<12} {'val target':>10} {'val general':>11} {'test target':>11} {'test general':>12}  key",
    ]
    for name, row, test in search_rows(report):
        lines.append(
            f"{name:<12} {row['target']:>10.2f} {row['general']:>11.2f} "
            f"{test.get('target', float('nan')):>11.2f} {test.get('general', float('nan')):>12.2f}  "
            f"{row['key']}"
        )
    lines.append(f"selected on validation (exported by `rewind export --from`): {report['selected']}")
    return "\n".join(lines)
