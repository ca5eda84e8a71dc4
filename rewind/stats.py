"""Paired statistics over per-item scores: bootstrap intervals, selection on intervals, racing, the noise floor.

Data model. A point's per-item scores are {task: array}, in the sweep's units (0-100: an accuracy item scores 0 or
100), with the same items in the same order for every point (`align` builds that order from doc ids). An axis
(target, general) is a weighted mean of task means, S = sum_t w_t * mean_i x_ti with sum_t w_t = 1; `suite_weights`
gives the sweep's weights (the mean over suites of the mean over each suite's tasks).

Every point is scored on the same items, so differences between points are paired: the bootstrap resamples items
once (within each task, with replacement) and scores every point on that same resample, so the item-level noise
shared by two points cancels in their difference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import pareto
from .errors import RewindError

ITEM_RANGE = 100.0  # item scores lie in [0, 100]: the widest possible gap between two points on one item


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval at the bootstrap's confidence; str() writes it as a signed
    difference, one decimal: +4.4 [+1.9, +6.8]."""

    estimate: float
    low: float
    high: float

    @property
    def ci(self) -> list[float]:
        return [self.low, self.high]

    def __str__(self) -> str:  # +4.4 [+1.9, +6.8]
        return f"{_signed(self.estimate)} [{_signed(self.low)}, {_signed(self.high)}]"


def _signed(x: float) -> str:
    return f"{round(x, 1) + 0.0:+.1f}"  # + 0.0 turns a rounded -0.0 into +0.0


def confidently_above(diff: Interval, threshold: float = 0.0) -> bool:
    """True when the whole interval lies above `threshold` (for a difference: confidently better by more)."""
    return diff.low > threshold


def suite_weights(suites: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Task weights for an axis scored as the mean over suites of the mean of each suite's tasks (as the sweep)."""
    weights: dict[str, float] = {}
    for tasks in suites.values():
        for task in tasks:
            weights[task] = weights.get(task, 0.0) + 1.0 / (len(suites) * len(tasks))
    return weights


def _normalize(axes: Mapping[str, Sequence[str] | Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """{axis: {task: weight}} with weights summing to 1; a plain task list weighs its tasks equally."""
    out = {}
    for axis, tasks in axes.items():
        weights = dict(tasks) if isinstance(tasks, Mapping) else {t: 1.0 for t in tasks}
        total = sum(weights.values())
        if not weights or total <= 0 or any(w < 0 for w in weights.values()):
            raise RewindError(f"axis {axis!r}: needs tasks with non-negative weights summing above 0")
        out[axis] = {t: w / total for t, w in weights.items()}
    return out


def align(points: Mapping[str, Mapping[str, Mapping[object, float]]]) -> dict[str, dict[str, np.ndarray]]:
    """{point: {task: {doc_id: score}}} -> {point: {task: array}}, items in the first point's doc id order.

    Refuses points whose tasks or doc ids differ: paired statistics need the very same items for every point.
    """
    if not points:
        raise RewindError("no points to align")
    first_name, first = next(iter(points.items()))
    order = {task: list(docs) for task, docs in first.items()}
    out = {}
    for name, tasks in points.items():
        if set(tasks) != set(order):
            raise RewindError(f"{name}: tasks {sorted(tasks)} differ from {first_name}'s {sorted(order)}")
        for task, docs in tasks.items():
            if set(docs) != set(order[task]):
                raise RewindError(
                    f"{name}: {task} items differ from {first_name}'s ({len(docs)} vs "
                    f"{len(order[task])} doc ids; {len(set(docs) ^ set(order[task]))} not shared)"
                )
        out[name] = {task: np.array([tasks[task][d] for d in ids], float) for task, ids in order.items()}
    return out


def _stack(points: Mapping[str, Mapping[str, np.ndarray]], tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """{task: (points, items) array}, refusing missing tasks, ragged item counts and non-finite scores."""
    if not points:
        raise RewindError("no points to compare")
    out = {}
    for task in tasks:
        rows = []
        for name, scores in points.items():
            if task not in scores:
                raise RewindError(f"{name}: no item scores for task {task}")
            rows.append(np.asarray(scores[task], float).ravel())
        if len({len(r) for r in rows}) != 1 or len(rows[0]) == 0:
            raise RewindError(
                f"{task}: every point needs the same, non-zero number of items (got {sorted({len(r) for r in rows})})"
            )
        stacked = np.stack(rows)
        if not np.isfinite(stacked).all():
            raise RewindError(f"{task}: item scores must be finite")
        out[task] = stacked
    return out


Axis = str | Mapping[str, float]  # an axis name, or a combination of axes such as {"target": 1, "general": 1}


@dataclass(frozen=True)
class Bootstrap:
    """Paired bootstrap replicates of every point's task means, from one resample of items shared by all points.

    For each task t with n_t items, row b of an (n_boot, n_t) index matrix draws n_t items with replacement;
    m*_ptb is point p's mean over those items. Any linear score S = sum_t c_t m_pt (an axis, a combination of
    axes, or the difference of two points on it) has replicates S*_b = sum_t c_t m*_ptb. Intervals are BCa
    (Efron 1987; cheap here because S is linear): the percentile interval at levels
    Phi(z0 + (z0 + z) / (1 - a (z0 + z))) for z = Phi^-1((1 -+ confidence) / 2), with bias z0 = Phi^-1(share of
    S*_b below S) and acceleration a = sum L^3 / (6 (sum L^2)^1.5) over the items' influence L_ti =
    c_t (x_ti - mean_t) / n_t. With a = z0 = 0 it is the plain percentile interval.
    """

    names: list[str]
    axes: dict[str, dict[str, float]]  # axis -> {task: weight}, weights summing to 1
    items: dict[str, np.ndarray] = field(repr=False)  # task -> (points, items)
    replicates: dict[str, np.ndarray] = field(repr=False)  # task -> (points, n_boot) resampled task means
    confidence: float = 0.9

    def interval(self, point: str, axis: Axis) -> Interval:
        """`point`'s score on `axis` with its interval."""
        return self._linear(self._coefs(axis), self._row(point), None)

    def estimate(self, point: str, axis: Axis) -> float:
        """`point`'s score on `axis` (no interval)."""
        i = self._row(point)
        return float(sum(c * self.items[task][i].mean() for task, c in self._coefs(axis).items()))

    def diff(self, point: str, other: str, axis: Axis) -> Interval:
        """The paired difference `point` - `other` on `axis`, with its interval."""
        return self._linear(self._coefs(axis), self._row(point), self._row(other))

    def joint(self, points: Sequence[str], other: str, axis: Axis) -> dict[str, Interval]:
        """Simultaneous intervals of `point` - `other` for every point of `points`: all cover at once with
        probability about `confidence` (max-t bootstrap, so correlated points cost less than Bonferroni).

        With D_p the difference, D*_pb its replicates and se_p their standard deviation, the bounds are
        D_p - c_lo se_p and D_p + c_hi se_p, c_lo and c_hi the (1 + confidence) / 2 quantiles over b of
        max_p (D_p - D*_pb) / se_p and of max_p (D*_pb - D_p) / se_p. For one point: the percentile interval.
        """
        rows, j = [self._row(p) for p in points], self._row(other)
        if not rows:
            return {}
        est, reps = np.zeros(len(rows)), 0.0
        for task, c in self._coefs(axis).items():
            est += c * (self.items[task][rows].mean(axis=1) - self.items[task][j].mean())
            reps = reps + c * (self.replicates[task][rows] - self.replicates[task][j])
        se = np.std(reps, axis=1)
        live = se > 1e-9 * (1.0 + np.abs(est))  # the others have no varying item: their difference is exact
        dev = (reps[live] - est[live, None]) / se[live, None] if live.any() else np.zeros((1, 1))
        level = (1 + self.confidence) / 2
        c_lo, c_hi = np.quantile(np.max(-dev, axis=0), level), np.quantile(np.max(dev, axis=0), level)
        return {p: Interval(float(e), float(e - c_lo * s), float(e + c_hi * s)) for p, e, s in zip(points, est, se)}

    def _row(self, point: str) -> int:
        try:
            return self.names.index(point)
        except ValueError:
            raise RewindError(f"no point {point!r} among the bootstrapped points") from None

    def _coefs(self, axis: Axis) -> dict[str, float]:
        """{task: coefficient} of a linear score: an axis's weights, or a combination's sum of them."""
        combo = {axis: 1.0} if isinstance(axis, str) else axis
        coefs: dict[str, float] = {}
        for name, c in combo.items():
            if name not in self.axes:
                raise RewindError(f"no axis {name!r} (axes: {', '.join(self.axes)})")
            for task, w in self.axes[name].items():
                coefs[task] = coefs.get(task, 0.0) + c * w
        return coefs

    def _linear(self, coefs: dict[str, float], i: int, j: int | None) -> Interval:
        estimate, reps, influence = 0.0, 0.0, []
        for task, c in coefs.items():
            x, r = self.items[task][i], self.replicates[task][i]
            if j is not None:
                x, r = x - self.items[task][j], r - self.replicates[task][j]
            estimate += c * x.mean()
            reps = reps + c * r
            influence.append(c * (x - x.mean()) / len(x))
        return _bca(estimate, np.asarray(reps), np.concatenate(influence), self.confidence)


def _bca(estimate: float, reps: np.ndarray, influence: np.ndarray, confidence: float) -> Interval:
    """The BCa interval (see Bootstrap) of `estimate` from its replicates and its items' influence values."""
    from scipy.special import ndtr, ndtri  # here, not at start-up, where every CLI command would pay 0.2-0.4 s

    tie = 1e-9 * (1.0 + abs(estimate))  # replicates equal to the estimate up to rounding count half below
    if reps.max() - reps.min() <= tie:  # no item varies: the data show no uncertainty to resample
        return Interval(float(estimate), float(estimate), float(estimate))
    below = np.mean(reps < estimate - tie) + 0.5 * np.mean(np.abs(reps - estimate) <= tie)
    z0 = ndtri(np.clip(below, 0.5 / len(reps), 1 - 0.5 / len(reps)))
    s2 = np.sum(influence**2)
    a = np.sum(influence**3) / (6 * s2**1.5) if s2 > 0 else 0.0
    z = ndtri(np.array([(1 - confidence) / 2, (1 + confidence) / 2]))
    low, high = np.quantile(reps, ndtr(z0 + (z0 + z) / (1 - a * (z0 + z))))
    return Interval(float(estimate), float(low), float(high))


def paired_bootstrap(
    points: Mapping[str, Mapping[str, np.ndarray]],
    axes: Mapping[str, Sequence[str] | Mapping[str, float]],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.9,
) -> Bootstrap:
    """Resample items once per task (stratified, with replacement) and score every point on the same resample.

    `points`: {name: {task: item scores}}; `axes`: {axis: tasks, or {task: weight}} (e.g. `suite_weights`).
    Cost: one (points x items) @ (items x n_boot) product per task.
    """
    if not 0 < confidence < 1:
        raise RewindError(f"confidence {confidence}: must be between 0 and 1")
    if n_boot < 2:
        raise RewindError(f"n_boot {n_boot}: needs at least 2 resamples")
    weights = _normalize(axes)
    tasks = sorted(set().union(*weights.values()))  # a fixed order: the same seed gives the same resample
    items = _stack(points, tasks)
    rng = np.random.default_rng(seed)
    replicates = {task: _resampled_means(items[task], n_boot, rng) for task in tasks}
    return Bootstrap(list(points), weights, items, replicates, confidence)


def _resampled_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(points, n_boot) means over n_boot resamples of x's columns; counts, not gathers, keep it one product."""
    n = x.shape[1]
    index = rng.integers(0, n, size=(n_boot, n))
    counts = np.bincount((index + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    return x @ counts.reshape(n_boot, n).T.astype(float) / n


@dataclass(frozen=True)
class Verdict:
    """A rule's choice on intervals: the point, whether it is the final adapter kept, why, and the evidence."""

    chosen: str
    kept_final: bool
    reason: str  # e.g. "dense@0.6: general +4.4 [+1.9, +6.8] vs final; target -6.2 [-10.1, -2.3] (...)"
    evidence: dict  # {"base"|"final": {"target"|"general": {"delta": d, "ci": [low, high]}}}: chosen - reference


def objective_axis(rule: str, weight: float = 0.5) -> tuple[str, Axis]:
    """(label, axis) of the score a scalar rule compares against the final adapter, as in `pareto.objective`."""
    pareto.objective(rule, None, weight=weight)  # refuses knee, unknown rules, bad weights
    if rule == "max-target-within":
        return "target", "target"
    if rule == "max-sum":
        return "target+general", {"target": 1.0, "general": 1.0}
    return f"{weight:g}*target+{1 - weight:g}*general", {"target": weight, "general": 1.0 - weight}


WITHIN, BEYOND, UNDECIDED = "within", "beyond", "undecided"


def against_tolerance(
    boot: Bootstrap, points: Sequence[str], base: str, tolerance: float
) -> tuple[dict[str, Interval], dict[str, str]]:
    """Each point's general vs the base, jointly over `points` (the base left out), and where that puts it against
    -tolerance: WITHIN (confidently above; the base always is), BEYOND (confidently below) or UNDECIDED."""
    vs_base = boot.joint([p for p in points if p != base], base, "general")

    def side(p: str) -> str:
        if p == base or vs_base[p].low >= -tolerance:
            return WITHIN
        return BEYOND if vs_base[p].high < -tolerance else UNDECIDED

    return vs_base, {p: side(p) for p in points}


def select(
    boot: Bootstrap,
    rule: str = "max-target-within",
    base: str = "base@0",
    final: str = "final@1",
    tolerance: float = 1.0,
    weight: float = 0.5,
) -> Verdict:
    """One point by `rule` (the names of `pareto.RULES`), deciding on paired intervals; the final is the default.

    - max-target-within: a point is admissible when its general difference vs the base has its lower bound
      >= -tolerance (the base always is). The final is left for the admissible point with the highest target
      only when its own general loss is confidently beyond the tolerance (upper bound < -tolerance); otherwise,
      admissible or undecided, it is left only for an admissible point confidently above it on target. The final
      is the default: a point that might be within tolerance keeps its gain until the data say otherwise.
    - max-sum, weighted: the final is left only for a point confidently above it on target + general
      (weight*target + (1 - weight)*general).
    Among the points that qualify, the best estimate of the objective wins; ties go to the higher general
    estimate, then the earlier point. When none qualifies, the final is kept and the reason says so.
    Both tests use joint intervals (`Bootstrap.joint`) over all the points they compare, so however many points
    the sweep has, a point is wrongly admitted, or the final wrongly left, with probability about
    (1 - confidence) / 2 each. The reason shows those; its head and the evidence show the chosen point's own.
    """
    label, axis = objective_axis(rule, weight)
    within = rule == "max-target-within"
    boot._row(base), boot._row(final)  # both must be among the points
    rank = {p: (boot.estimate(p, axis), boot.estimate(p, "general"), -i) for i, p in enumerate(boot.names)}
    pool = [p for p in boot.names if p != final]
    if within:
        vs_base, side = against_tolerance(boot, boot.names, base, tolerance)
        pool = [p for p in pool if side[p] == WITHIN]
        if side[final] == BEYOND:
            chosen = max(pool, key=rank.__getitem__)
            why = (
                f"{rule}: the final's general vs base, {vs_base[final]} {_joint(vs_base)}, is confidently "
                f"beyond -{tolerance:g}; {chosen} has the highest target of the points confidently within it"
            )
            return _verdict(boot, chosen, base, final, [("general", "general"), ("target", "target")], why)
    vs_final = boot.joint(pool, final, axis)
    better = [p for p in pool if confidently_above(vs_final[p])]
    if not better:
        closest = max(pool, key=rank.__getitem__, default=None)
        return _kept(boot, base, final, label, vs_final, closest, vs_base if within else None, tolerance)
    chosen = max(better, key=rank.__getitem__)
    shown = [(label, axis)] * (not within) + [("target", "target"), ("general", "general")]
    why = f"{rule}: confidently above the final on {label}, {vs_final[chosen]} {_joint(vs_final)}"
    if within and chosen != base:
        why += f"; general vs base {vs_base[chosen]} {_joint(vs_base)}, within -{tolerance:g}"
    return _verdict(boot, chosen, base, final, shown, why)


def _kept(boot: Bootstrap, base: str, final: str, label: str, vs_final: dict, closest, vs_base, tolerance) -> Verdict:
    """The final kept: no point is confidently above it on `label` (under a tolerance, `vs_base` given: nor is its
    own general loss confidently beyond it)."""
    why = f"{final} kept: no point{' within tolerance' * (vs_base is not None)} is confidently above it on {label}, "
    why += _joint(vs_final)
    if vs_base is not None and final != base:
        why += f", and its general vs base, {vs_base[final]} {_joint(vs_base)}, is not confidently beyond "
        why += f"-{tolerance:g}"
    if closest:
        why += f"; closest: {closest}: {label} {vs_final[closest]} vs final"
    return _verdict(boot, final, base, final, [], why)


def _joint(intervals: dict) -> str:
    return f"jointly over {len(intervals)} point{'s' * (len(intervals) != 1)}"


def _verdict(boot: Bootstrap, chosen: str, base: str, final: str, shown: list[tuple[str, Axis]], why: str) -> Verdict:
    """`chosen`'s verdict: its differences vs the final on `shown` head the reason (unless it is the final)."""
    evidence = {
        name: {a: {"delta": d.estimate, "ci": d.ci} for a in ("target", "general") for d in [boot.diff(chosen, ref, a)]}
        for name, ref in (("base", base), ("final", final))
    }
    if chosen == final:
        return Verdict(chosen, True, why, evidence)
    parts = [f"{label} {boot.diff(chosen, final, axis)}" for label, axis in shown]
    head = f"{chosen}: {parts[0]} vs final" + "".join(f"; {p}" for p in parts[1:])
    return Verdict(chosen, False, f"{head} ({why})", evidence)


@dataclass
class Race:
    """A race's outcome: every item score it evaluated, its log, the survivors and the item evaluations spent."""

    scores: dict[str, dict[str, np.ndarray]]  # point -> task -> scores of the items it was given, in order
    log: list[dict]  # {"round", "task", "items": [start, stop], "points"} and {"round", "dropped", "by"}
    survivors: list[str]
    spent: int = 0


ChunkFn = Callable[[list[str], str, slice], Mapping[str, Sequence[float]]]


def _normal_quantile(q: float) -> float:
    """Phi^-1(q), with scipy imported here, not at start-up (see _bca)."""
    from scipy.special import ndtri

    return ndtri(q)


def race(
    evaluate_chunk: ChunkFn,
    points: Sequence[str],
    axes: Mapping[str, Sequence[str] | Mapping[str, float]],
    chunks: Sequence[int],
    budget: int | None = None,
    sizes: Mapping[str, int] | None = None,
    keep: Sequence[str] = (),
    confidence: float = 0.9,
) -> Race:
    """Race `points`: each round gives every survivor the next `chunks[r]` items of every task, then drops the
    points another survivor confidently dominates, until the chunks, the items or the budget run out or at most
    one point that may be dropped is left (after the first round, which every point is given: all have scores).

    `evaluate_chunk(points, task, items)` returns {point: scores of items[start:stop]}. `budget` caps the item
    evaluations (points x items; the last round shrinks to fit); `sizes` caps each task's items (None: as many as
    asked, e.g. generated tasks); `keep` are never dropped (references such as the base and the final).

    p dominates q when, on every axis, the paired lower bound of p - q is >= 0, and > 0 on one; the lower bound is
    est - z se with se^2 = sum_t w_t^2 s_t^2 / n_t (the variance the bootstrap estimates, in normal form because
    the tail below is too far out for a thousand resamples) and s_t^2 the variance of the item differences as if
    the task had one more pair of items differing by +-100 (a floor: agreement on a few items is no proof of
    equality). z = Phi^-1(1 - (1 - confidence) / (R (S - 1))) over R = len(chunks) rounds and S survivors, so a
    point that no other truly dominates survives the race with probability >= confidence (union bound). As se > 0,
    a lower bound >= 0 needs est > 0: in effect p must be confidently better on every axis (an exact tie on an
    axis, such as a task no point solves, proves no >=).
    """
    weights, tasks = _race_inputs(points, axes, chunks, keep, confidence)
    scores = {p: {t: np.empty(0) for t in tasks} for p in points}
    survivors, log, spent, taken = list(points), [], 0, dict.fromkeys(tasks, 0)
    for round_, chunk in enumerate(chunks):
        if round_ and sum(p not in keep for p in survivors) <= 1:  # every point is given the first round
            break
        left = None if budget is None else (budget - spent) // len(survivors)
        plan = _plan(chunk, taken, sizes or {}, left)
        if not plan:
            break
        for task, items in plan.items():
            got = evaluate_chunk(list(survivors), task, items)
            for p in survivors:
                scores[p][task] = np.concatenate([scores[p][task], _chunk_scores(got, p, task, items)])
            log.append({"round": round_, "task": task, "items": [items.start, items.stop], "points": survivors})
            taken[task] = items.stop
            spent += len(survivors) * (items.stop - items.start)
        z = _normal_quantile(1 - (1 - confidence) / (len(chunks) * (len(survivors) - 1)))
        dropped = _dominated(scores, survivors, weights, set(keep), z)
        log += [{"round": round_, "dropped": q, "by": p} for q, p in dropped.items()]
        survivors = [p for p in survivors if p not in dropped]
    return Race(scores, log, survivors, spent)


def _race_inputs(points, axes, chunks, keep, confidence) -> tuple[dict[str, dict[str, float]], list[str]]:
    if len(set(points)) != len(points) or len(points) < 1:
        raise RewindError("race: needs at least one point, each named once")
    if not set(keep) <= set(points):
        raise RewindError(f"race: kept points {sorted(set(keep) - set(points))} are not among the points")
    if not chunks or any(int(c) != c or c < 1 for c in chunks):
        raise RewindError(f"race: chunks {list(chunks)} must be positive item counts")
    if not 0 < confidence < 1:
        raise RewindError(f"confidence {confidence}: must be between 0 and 1")
    weights = _normalize(axes)
    return weights, sorted(set().union(*weights.values()))


def _plan(chunk: int, taken: dict[str, int], sizes: Mapping[str, int], left: int | None) -> dict[str, slice]:
    """The next items of each task that has any left: `chunk` each, fewer where a task's size or the per-point
    budget `left` says so (shared by water-filling: a task with fewer items left than its share takes them all,
    the others split what it leaves, so a budget that covers every item is spent on every item)."""
    wants = {t: min(chunk, sizes.get(t, np.inf) - n) for t, n in taken.items() if sizes.get(t, np.inf) > n}
    if left is not None:
        for i, (task, want) in enumerate(sorted(wants.items(), key=lambda tw: tw[1])):
            wants[task] = min(want, left // (len(wants) - i))
            left -= wants[task]
    return {t: slice(taken[t], taken[t] + int(k)) for t, k in wants.items() if k > 0}


def _chunk_scores(got: Mapping[str, Sequence[float]], point: str, task: str, items: slice) -> np.ndarray:
    scores = np.asarray(got.get(point, ()), float).ravel()
    if len(scores) != items.stop - items.start or not np.isfinite(scores).all():
        raise RewindError(
            f"race: evaluate_chunk gave {point} {len(scores)} scores on {task} items "
            f"{items.start}:{items.stop}; needs {items.stop - items.start} finite ones"
        )
    return scores


def _dominated(
    scores, survivors: list[str], weights: dict[str, dict[str, float]], keep: set[str], z: float
) -> dict[str, str]:
    """{q: p} for each survivor q (not kept) that survivor p confidently dominates (see `race`)."""
    lows = [_lower_bounds(scores, survivors, w, z) for w in weights.values()]  # each (S, S): row - column
    dominates = np.all([low >= 0 for low in lows], axis=0) & np.any([low > 0 for low in lows], axis=0)
    return {
        q: survivors[int(np.argmax(dominates[:, j]))]
        for j, q in enumerate(survivors)
        if q not in keep and dominates[:, j].any()
    }


def _lower_bounds(scores, survivors: list[str], weights: dict[str, float], z: float) -> np.ndarray:
    """(S, S) lower bounds est - z se of the paired differences row - column on one axis (see `race`)."""
    est, var = 0.0, 0.0
    for task, w in weights.items():
        x = np.stack([scores[p][task] for p in survivors])
        n = x.shape[1]
        mean = x.mean(axis=1)
        d = mean[:, None] - mean[None, :]
        cov = np.cov(x) if n > 1 else np.zeros((len(x), len(x)))
        var_d = np.diag(cov)[:, None] + np.diag(cov)[None, :] - 2 * cov  # variance of the item differences
        # add the pair (+100, -100): N = n + 2 items, mean n d / N, sum of squares (n - 1) var_d + n d^2 + 2 * 100^2
        big_n = n + 2
        squares = (n - 1) * var_d + n * d**2 + 2 * ITEM_RANGE**2 - (n * d) ** 2 / big_n
        est, var = est + w * d, var + w**2 * squares / (big_n - 1) / big_n
    return est - z * np.sqrt(var)


def flips(first: Mapping[str, Sequence[float]], second: Mapping[str, Sequence[float]]) -> dict[str, int]:
    """Per task, the items scored differently by two evaluations of the same point: 0 everywhere when the
    evaluation is deterministic, else the noise floor below which a difference between points means nothing."""
    if set(first) != set(second):
        raise RewindError(f"flips: tasks differ ({sorted(set(first) ^ set(second))})")
    out = {}
    for task in first:
        a, b = np.asarray(first[task], float), np.asarray(second[task], float)
        if a.shape != b.shape:
            raise RewindError(f"flips: {task} has {a.size} items in one result and {b.size} in the other")
        out[task] = int(np.sum(~np.isclose(a, b, rtol=0.0, atol=1e-9)))
    return out
