"""`rewind search`: per-layer-group alphas chosen on the validation split, starting from the best uniform alpha.

The paper leaves open how to pick per-layer rewinding magnitudes. We climb the sweep's own selection objective
(`pareto.objective`) with a compass search over contiguous layer groups, in rounds, so that a round's candidates are
evaluated together (one `Session.evaluate` call: one grid pass for the points, issue 16):
- a round proposes, from the incumbent, each group's alpha moved by the step, up and down, snapped to the grid of
  the smallest step and kept within [0, 1]; the incumbent itself is left out;
- candidates scored before (the sweep's points, an earlier round's) are free; the new ones are trimmed to what is
  left of the budget, each group's preferred direction first (the one that last paid off, down at first), in
  group order, then the other directions;
- among the candidates confidently better than the incumbent, the one with the best objective value becomes the
  incumbent (ties: the earlier proposal) and the step stays; if none is, the step halves;
- the search stops once the step falls below the smallest step, or the budget (new evaluations) is spent.
It needs no gradients, copes with the step-shaped scores of a finite evaluation set, and is deterministic.

"Confidently better" is paired where the sweep has per-item scores (`confidently_better`), else the greater value.
A round compares its k candidates with the incumbent at once, so it decides on joint intervals
(`stats.Bootstrap.joint`, max-t over the round's candidates, as the sweep's selection does): the chance that any
candidate of a round passes by luck stays about (1 - confidence) / 2, as for one comparison. Bonferroni (each test
at 1 - (1 - confidence) / k) would promise the same for wider intervals, as neighbouring candidates are correlated,
and at k = 60 (`--groups layer` on 30 layers) would read its bounds beyond the bootstrap's 1000 replicates. Under
max-target-within the feasibility test (general vs the base) is joint over the round's points too.

Every candidate is one more point of the sweep (same results.jsonl, same run id), so the sweep's table and
pareto.png show uniform and searched points together, and `rewind export --from` exports the chosen schedule.
search.json's history lists every round's candidates (round 0: the start). Validation picks; the test split
reports (chosen schedule, best uniform alpha, final adapter, base).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

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


Groups = tuple[float, ...]  # one alpha per layer group


class Judge(Protocol):
    """What `compass` asks of the scores: which points are scored already, score a round's new ones together, and
    which candidate (if any) replaces the incumbent."""

    def known(self, point: Groups) -> bool: ...

    def evaluate(self, points: list[Groups]) -> None: ...

    def pick(self, candidates: list[Groups], incumbent: Groups) -> Groups | None: ...


def compass(
    judge: Judge, start: Groups, step: float, min_step: float, budget: int, lo: float = 0.0, hi: float = 1.0
) -> Groups:
    """Round by round from `start` (scored already), the incumbent that `judge.pick` leaves (module docstring).
    At most `budget` points are new (`judge.known` false); each round's new points go to one `judge.evaluate`."""
    preferred = [-1] * len(start)  # rewinding (down) first; then whichever direction last paid off, per group
    best, spent = start, 0
    while step >= min_step - 1e-12 and spent < budget:
        moves = proposals(best, step, preferred, min_step, lo, hi)
        new = [c for c in moves if not judge.known(c)][: budget - spent]
        candidates = [c for c in moves if c in new or judge.known(c)]  # in proposal order
        if new:
            judge.evaluate(new)
            spent += len(new)
        winner = judge.pick(candidates, best)
        if winner is None:
            step /= 2
            continue
        g, direction = moves[winner]
        best, preferred[g] = winner, direction
    return best


def proposals(
    best: Groups, step: float, preferred: list[int], grid: float, lo: float, hi: float
) -> dict[Groups, tuple[int, int]]:
    """{candidate: (group, direction)}: each group's alpha moved by `step` (snapped to the `grid`, within [lo, hi])
    in its preferred direction, then every group's other direction; the incumbent itself and repeats left out."""

    def snap(a: float) -> float:
        return round(min(hi, max(lo, round(a / grid) * grid)), 6)

    out: dict[Groups, tuple[int, int]] = {}
    for sign in (1, -1):
        for g, first in enumerate(preferred):
            direction = sign * first
            candidate = best[:g] + (snap(best[g] + direction * step),) + best[g + 1 :]
            if candidate != best:
                out.setdefault(candidate, (g, direction))
    return out


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
            "rounds": climb.rounds,
            "paired": climb.paired,
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


def confidently_better(
    boot: stats.Bootstrap, rule: Rule, candidates: list[str], incumbent: str, base: str
) -> list[str]:
    """The candidates that beat the incumbent under `rule`, paired, jointly at the bootstrap's confidence
    (`Bootstrap.joint`: a round's candidates are compared at once; module docstring).

    max-sum, weighted: the joint lower bound of candidate - incumbent on the rule's objective is above 0.
    max-target-within, as the sweep's selection (stats.select): a point is within the tolerance when its general
    vs the base is confidently above -tolerance (joint over the round's points; the base always is), beyond it
    when confidently below. An incumbent beyond it gives way to any candidate within, and to one confidently
    better on general (so a search can climb back); any other incumbent, within or undecided, only to a candidate
    within and confidently above it on target.
    """
    _, axis = stats.objective_axis(rule.name, rule.weight)
    if rule.name != "max-target-within":
        vs_incumbent = boot.joint(candidates, incumbent, axis)
        return [c for c in candidates if stats.confidently_above(vs_incumbent[c])]
    _, side = stats.against_tolerance(boot, [*candidates, incumbent], base, rule.tolerance)
    within = {c: side[c] == stats.WITHIN for c in candidates}
    if side[incumbent] == stats.BEYOND:
        vs_incumbent = boot.joint([c for c in candidates if not within[c]], incumbent, "general")
        return [c for c in candidates if within[c] or stats.confidently_above(vs_incumbent[c])]
    vs_incumbent = boot.joint([c for c in candidates if within[c]], incumbent, "target")
    return [c for c in vs_incumbent if stats.confidently_above(vs_incumbent[c])]


class Climb:
    """The compass search over one path's layer groups (the `Judge` of `compass`), each candidate a point scored
    through the session; `history` keeps every candidate of every round."""

    def __init__(self, session: Session, report: Report, path: str, alpha: float, groups: list[list[int]]):
        self.session, self.report, self.path, self.alpha, self.groups = session, report, path, alpha, groups
        self.value = report.rule.objective(report.selection.base)
        self.paired = report.bootstrap() is not None  # moves taken on paired intervals (else on the scores)
        self.spent, self.rounds, self.history = 0, 0, []
        self._new: set[str] = set()  # keys evaluated by the round in progress

    def point(self, group_alphas: Groups) -> Point:
        layers = [group_alphas[g] for g, members in enumerate(self.groups) for _ in members]
        return Point.at(self.path, self.alpha, layers)

    def run(self, spec: SearchSpec) -> Point:
        start = (self.alpha,) * len(self.groups)
        self._record(0, [start], start)
        return self.point(compass(self, start, spec.step, spec.min_step, spec.budget))

    def known(self, group_alphas: Groups) -> bool:
        """Points already scored (the sweep's, an earlier search's, an earlier round's) are free."""
        return self.report.row(self.point(group_alphas)) is not None

    def evaluate(self, points: list[Groups]) -> None:
        """One call for the round's new points: the session scores the points in one grid pass."""
        scored = [self.point(p) for p in points]
        self.report.extend(self.session.evaluate(scored, VALIDATION), self.session.take_items())
        self.spent += len(scored)
        self._new = {p.key for p in scored}

    def pick(self, candidates: list[Groups], incumbent: Groups) -> Groups | None:
        """Of the candidates confidently better than the incumbent (paired where the sweep has per-item scores, else
        by the objective's value), the one with the best value; ties go to the earlier proposal. None: no move."""
        self.rounds += 1
        rows = {c: self.report.row(self.point(c)) for c in [*candidates, incumbent]}
        if self.paired:
            keys = {c: rows[c].key for c in candidates}
            base = self.report.selection.base.key
            boot = self.report.bootstrap(VALIDATION, [*keys.values(), rows[incumbent].key, base])
            passed = set(confidently_better(boot, self.report.rule, list(keys.values()), rows[incumbent].key, base))
            better = [c for c in candidates if keys[c] in passed]
        else:
            better = [c for c in candidates if self.value(rows[c]) > self.value(rows[incumbent])]
        winner = max(better, key=lambda c: self.value(rows[c]), default=None)
        self._record(self.rounds, candidates, winner)
        return winner

    def _record(self, number: int, candidates: list[Groups], winner: Groups | None) -> None:
        for c in candidates:
            row = self.report.row(self.point(c))
            self.history.append(
                {
                    "round": number,
                    "key": row.key,
                    "groups": list(c),
                    "target": row.target,
                    "general": row.general,
                    "new": row.key in self._new,  # evaluated by this round (else scored before: free)
                    "moved": c == winner,  # became the incumbent (round 0: the start)
                }
            )
        self._new = set()


def report_table(report: dict) -> str:
    """Validation and test scores of the searched schedule against the best uniform alpha, final and base."""
    lines = [
        f"search on {report['path']} ({report['rule']}): {report['evaluations']} new validation evaluations in "
        f"{report['rounds']} rounds, "
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
