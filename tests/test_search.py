"""Per-layer search: groups, the compass climber, and a search on a tiny sweep (scores, budget, plot, export)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import tinysweep
import torch
from safetensors.torch import load_file

from rewind import engine, pareto, search, sweep
from rewind.cli import main
from rewind.errors import RewindError
from rewind.evaluate import harness
from rewind.report import Report, Rule
from rewind.results import BASE, FINAL, VALIDATION, Point, Scored
from rewind.schedule import Schedule
from rewind.session import Session


def test_layer_groups_are_contiguous_and_balanced():
    assert search.layer_groups(30, "4") == [
        list(range(0, 8)),
        list(range(8, 16)),
        list(range(16, 23)),
        list(range(23, 30)),
    ]
    assert search.layer_groups(3, "layer") == [[0], [1], [2]]
    assert search.layer_groups(5, 1) == [[0, 1, 2, 3, 4]]
    for bad in ("0", "6", "x"):
        with pytest.raises(RewindError, match="--groups"):
            search.layer_groups(5, bad)


class ByValue:
    """A judge of `compass` on a plain function: a point is better when its value is greater; records each round."""

    def __init__(self, value, known=()):
        self.value, self.scored, self.rounds = value, set(known), []

    def known(self, point):
        return point in self.scored

    def evaluate(self, points):
        assert not self.scored & set(points), "a point evaluated twice"
        self.rounds.append(list(points))
        self.scored |= set(points)

    def pick(self, candidates, incumbent):
        better = [c for c in candidates if self.value(c) > self.value(incumbent)]
        return max(better, key=self.value, default=None)


def test_compass_climbs_a_separable_objective_on_its_grid():
    goal = (0.35, 0.8, 0.1)

    def value(x):
        return -sum((a - g) ** 2 for a, g in zip(x, goal))

    judge = ByValue(value, [(0.5, 0.5, 0.5)])
    best = search.compass(judge, (0.5, 0.5, 0.5), step=0.2, min_step=0.05, budget=100)
    assert best == pytest.approx(goal, abs=0.026)  # the 0.05 grid's nearest points
    seen = [x for points in judge.rounds for x in points]
    assert all(0 <= a <= 1 and abs(a / 0.05 - round(a / 0.05)) < 1e-9 for x in seen for a in x)
    again = ByValue(value, [(0.5, 0.5, 0.5)])
    assert search.compass(again, (0.5, 0.5, 0.5), 0.2, 0.05, 100) == best and again.rounds == judge.rounds


def test_a_round_proposes_every_group_both_ways_preferred_first():
    judge = ByValue(lambda x: -x[0] - x[1] - x[2], [(0.5, 0.0, 1.0)])
    search.compass(judge, (0.5, 0.0, 1.0), step=0.2, min_step=0.1, budget=5)
    # down first for every group, then up; alpha 0 cannot go down nor 1 up (left out); one call per round
    assert judge.rounds[0] == [(0.3, 0.0, 1.0), (0.5, 0.0, 0.8), (0.7, 0.0, 1.0), (0.5, 0.2, 1.0)]
    # the winner (0.3, 0, 1): each group's preferred direction is down still, and (0.5, 0, 1) is free
    assert judge.rounds[1] == [(0.1, 0.0, 1.0)]  # the budget (5) is spent: one new point of the second round


def test_compass_stops_at_the_budget_and_keeps_the_best_seen():
    judge = ByValue(lambda x: x[0], [(0.0,)])  # climbing forever towards 1
    best = search.compass(judge, (0.0,), step=0.05, min_step=0.05, budget=4)
    assert judge.rounds == [[(0.05,)], [(0.1,)], [(0.15,)], [(0.2,)]] and best == (0.2,)


def test_compass_halves_the_step_when_no_candidate_is_better():
    judge = ByValue(lambda x: -abs(x[0] - 0.56), [(0.5,)])
    assert search.compass(judge, (0.5,), step=0.2, min_step=0.05, budget=100) == (0.55,)
    # 0.2: none better, halve; 0.1: 0.6 wins (up preferred now); 0.1 again: 0.7 and 0.5 are known and worse, so no
    # call and halve; 0.05: 0.55 wins; 0.05 again: 0.5 and 0.6 known, worse; the step would fall below 0.05
    assert judge.rounds == [[(0.3,), (0.7,)], [(0.4,), (0.6,)], [(0.65,), (0.55,)]]


class Synthetic:
    """A session without a model: target item i is solved when u_i < p(the point's layer alphas), the same u for
    every point (paired, as real items are); general items are alike at every point; `noise` flips that share of
    a point's items, at random with a seed of its own (the same point always scores the same)."""

    def __init__(self, p, noise: float = 0.0, items: int = 2000, layers: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.u, self.general = rng.random(items), rng.random(items) < 0.6
        self.p, self.noise, self.layers, self.seed = p, noise, layers, seed
        self.calls, self._items = [], []

    def lines(self, point: Point) -> tuple[list[dict], list[dict]]:
        solved = self.u < self.p(np.array(point.layers or (point.alpha,) * self.layers))
        if self.noise:
            solved ^= (
                np.random.default_rng([self.seed, zlib.crc32(point.key.encode())]).random(len(solved)) < self.noise
            )
        named = {"run": "r", "point": point.key, **point.fields(), "split": VALIDATION, "metric": "acc,none"}
        res, logged = [], []
        for role, task, correct in (("target", "t", solved), ("general", "g", self.general)):
            head = {**named, "role": role, "suite": task, "task": task, "score": 100 * correct.mean()}
            res.append({**head, "point_seconds": 1.0})
            logged.append({**head, "doc": list(range(len(correct))), "values": correct.astype(float).tolist()})
            logged[-1] |= {"weights": [1.0] * len(correct), "aggregation": "mean"}
        return res, logged

    def report(self, paired: bool = True) -> Report:
        """The uniform sweep at 0, 0.5 and 1 (without its items: decided on the scores alone)."""
        res, logged = zip(*(self.lines(p) for p in (BASE, FINAL, Point.at("linear", 0.5))))
        return Report(tinysweep.RECORD, sum(res, []), sum(logged, []) if paired else [])

    def evaluate(self, points, split):
        self.calls.append([p.key for p in points])
        res, logged = zip(*(self.lines(p) for p in points))
        self._items += sum(logged, [])
        return sum(res, [])

    def take_items(self):
        fresh, self._items = self._items, []
        return fresh


def _climb(session: Synthetic, budget: int, paired: bool = True) -> tuple[search.Climb, Point, Point]:
    """(the climb, its start, its result) of a search over 2 groups of 2 layers on `session`'s linear path."""
    report = session.report(paired)
    start = search.best_uniform(report, "linear")
    climb = search.Climb(session, report, "linear", start.point.alpha, search.layer_groups(4, 2))
    return climb, start.point, climb.run(search.SearchSpec(groups="2", budget=budget))


def test_the_search_reaches_a_clear_optimum_one_call_per_round():
    goal = np.array([0.6, 0.6, 0.3, 0.3])
    session = Synthetic(lambda layers: 0.7 - 0.5 * np.abs(layers - goal).mean())
    climb, start, chosen = _climb(session, budget=24)
    assert start.key == "linear@0.5" and chosen.layers == (0.6, 0.6, 0.3, 0.3)
    rounds = range(1, climb.rounds + 1)
    new = [[h["key"] for h in climb.history if h["round"] == r and h["new"]] for r in rounds]
    assert session.calls == [keys for keys in new if keys]  # each round's new candidates in one call
    assert climb.spent == sum(map(len, session.calls)) <= 24
    assert len({key for call in session.calls for key in call}) == climb.spent  # none evaluated twice
    moved = [h["groups"] for h in climb.history if h["moved"]]
    assert moved == [[0.5, 0.5], [0.5, 0.3], [0.6, 0.3]]  # the start, then one winner per round that paid off
    again = Synthetic(session.p)
    assert _climb(again, budget=24)[2] == chosen and again.calls == session.calls  # deterministic


def test_the_search_keeps_to_its_budget_trimming_a_round():
    goal = np.array([0.6, 0.6, 0.3, 0.3])
    session = Synthetic(lambda layers: 0.7 - 0.5 * np.abs(layers - goal).mean())
    climb, _, chosen = _climb(session, budget=6)
    # round 1: both groups down, then up (4); round 2 from (0.5, 0.3) has 3 new candidates, the budget 2: the
    # preferred directions (down) go first
    assert [len(call) for call in session.calls] == [4, 2] and climb.spent == 6
    assert session.calls[1] == ["linear@0.5[0.3x4]", "linear@0.5[0.5x2,0.1x2]"]
    assert chosen.layers == (0.5, 0.5, 0.3, 0.3)


def test_noise_does_not_move_the_search_but_moves_a_search_on_values():
    """Every point is the same but for noise (2% of its items flipped). On paired intervals, joint over each
    round's candidates, any move is a false discovery: at most about 5% a round, 14% over a search's 3 rounds
    (0.2, 0.1, 0.05). On the values alone a candidate luckier than the start moves it (here about half the time)."""
    kept, kept_on_values = 0, 0
    for seed in range(20):
        _, start, chosen = _climb(Synthetic(lambda layers: 0.4, noise=0.02, items=500, seed=seed), budget=12)
        kept += chosen.key == start.key
        _, start, chosen = _climb(Synthetic(lambda layers: 0.4, noise=0.02, items=500, seed=seed), 12, paired=False)
        kept_on_values += chosen.key == start.key
    assert kept >= 15 and kept_on_values <= 12, (kept, kept_on_values)


def test_an_undecided_incumbent_gives_way_only_to_a_target_win():
    """max-target-within decides as the sweep's selection (stats.select): an incumbent whose general loss may or
    may not be beyond the tolerance keeps its place against a candidate within it but lower on target; an
    incumbent confidently beyond it gives way to that candidate."""
    from test_stats import sweep_points

    spread = {"base@0": (0.1, 0.6), "a@0.3": (0.2, 0.6), "final@1": (0.32, 0.45)}
    boot = sweep_points(np.random.default_rng(2), 400, spread)
    vs_base = boot.joint(["a@0.3", "final@1"], "base@0", "general")
    undecided = -(vs_base["final@1"].low + vs_base["final@1"].high) / 2
    beyond = -vs_base["final@1"].high - 1.0
    assert vs_base["a@0.3"].low >= -beyond  # the candidate is within either tolerance
    rule = lambda tolerance: Rule("max-target-within", tolerance, 0.5)  # noqa: E731
    assert search.confidently_better(boot, rule(undecided), ["a@0.3"], "final@1", "base@0") == []
    assert search.confidently_better(boot, rule(beyond), ["a@0.3"], "final@1", "base@0") == ["a@0.3"]


def test_objective_agrees_with_select():
    base = Scored(BASE, 10, 50)
    a, b, c = (Point.at("linear", alpha) for alpha in (0.4, 0.6, 0.2))
    pts = [base, Scored(a, 30, 48.5), Scored(b, 40, 47), Scored(c, 20, 49.5)]
    key = pareto.objective("max-target-within", base, tolerance=2.0)
    assert max(pts, key=key).key == pareto.select(pts, base, "max-target-within", 2.0).key == a.key
    assert key(pts[2]) < key(base)  # falling short of the tolerance ranks below every qualifying point
    with pytest.raises(RewindError, match="knee"):
        pareto.objective("knee", base)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    base, adapter = tinysweep.make(root, layers=2)
    out = root / "sweep"
    args = tinysweep.sweep_args(base, adapter, out, "--alphas", "0,0.5,1")
    calls, evaluate = [], Session.evaluate

    def counted(self, points, split):
        calls.append((split, [p.key for p in points]))
        return evaluate(self, points, split)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as code:
        patch.setattr(Session, "evaluate", counted)
        main(["search", *args[1:], "--groups", "layer", "--budget", "3", "--objective", "max-sum"])
    assert code.value.code == 0
    return root, base, adapter, out, calls


def test_search_records_its_candidates_in_the_sweep(searched):
    root, base, adapter, out, _ = searched
    report = json.loads((out / "search.json").read_text())
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    validation = [r for r in records if r["split"] == "validation"]
    scheduled = {r["point"] for r in validation if r["layers"]}
    assert 1 <= report["evaluations"] <= 3 and len(scheduled) == report["evaluations"]
    assert report["rounds"] >= 1 and {h["round"] for h in report["history"]} == set(range(report["rounds"] + 1))
    assert len(validation) == len({(r["point"], r["task"]) for r in validation})  # nothing evaluated twice
    assert report["groups"] == [[0], [1]]
    assert report["paired"]  # the sweep logged its items: moves are taken on paired intervals
    summary = json.loads((out / "summary.json").read_text())
    assert scheduled <= {p["key"] for p in summary["points"]}  # table and plot show searched points too
    tests = {r["point"] for r in records if r["split"] == "test"}
    assert {"base@0", "final@1", report["best_uniform"]["key"], report["searched"]["key"]} <= tests
    for r in validation:  # one alpha per layer, on the 0.05 grid
        if r["layers"]:
            assert len(r["layers"]) == 2 and all(abs(a / 0.05 - round(a / 0.05)) < 1e-9 for a in r["layers"])


def test_each_round_is_one_evaluate_call(searched):
    root, base, adapter, out, calls = searched
    report = json.loads((out / "search.json").read_text())
    rounds = range(1, report["rounds"] + 1)
    new = [[h["key"] for h in report["history"] if h["round"] == r and h["new"]] for r in rounds]
    validation = [keys for split, keys in calls if split == "validation"]
    assert validation[1:] == [keys for keys in new if keys]  # after the sweep's own call: one call per round
    assert sum(map(len, validation[1:])) == report["evaluations"] <= 3


def test_a_searched_point_scores_what_its_schedule_scores(searched):
    """Independent check: put a fresh model at the schedule and evaluate it with the harness directly."""
    root, base, adapter, out, _ = searched
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    point = next(r for r in records if r["layers"] and r["split"] == "validation")
    rw = engine.open(str(base), str(adapter), device="cpu", dtype="fp32")
    rw.set(point["alpha"], Schedule("list", tuple(point["layers"])))
    suites = harness.resolve_suites([tinysweep.TARGET, tinysweep.GENERAL])
    results = harness.Evaluator(rw.model, rw.tokenizer, suites, "validation", limit=2, batch_size=8).run()
    mine = {r["task"]: r["score"] for r in records if r["point"] == point["point"] and r["split"] == "validation"}
    assert {r.task: r.score for r in results} == mine


def test_export_from_writes_a_selected_schedule(searched, tmp_path):
    root, base, adapter, out, _ = searched
    summary = json.loads((out / "summary.json").read_text())
    chosen = next(p for p in summary["points"] if p["layers"])
    summary["selected"] = chosen  # as if the search had won: export must reproduce that schedule
    (out / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit) as code:
        main(["export", "--from", str(out), "--out", str(tmp_path / "best")])
    assert code.value.code == 0
    rw = engine.open(str(base), str(adapter), device="cpu", dtype="fp32")
    rw.set(chosen["alpha"], Schedule("list", tuple(chosen["layers"])))
    written = {}
    for shard in (tmp_path / "best").glob("*.safetensors"):
        written |= load_file(shard)
    for name, param in rw.model.named_parameters():
        if name in written:
            assert torch.equal(written[name], param.detach()), name


def test_search_refuses_bad_settings(searched, capsys):
    root, base, adapter, out, _ = searched
    for extra, message in [
        (["--groups", "3"], "--groups 3"),
        (["--budget", "0"], "--budget"),
        (["--path", "cayley"], "--path cayley"),
    ]:
        with pytest.raises(SystemExit) as code:
            main(["search", "--out", str(out), "--device", "cpu", *extra])
        assert code.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(RewindError, match="uniform sweep"):
        search.Search(
            Session(
                sweep.SweepSpec(
                    adapter=str(adapter),
                    base=str(base),
                    layers="ramp",
                    device="cpu",
                    dtype="fp32",
                    target=[tinysweep.TARGET],
                    general=[tinysweep.GENERAL],
                ),
                out,
            ),
            search.SearchSpec(),
        )
