"""Per-layer search: groups, the compass climber, and a search on a tiny sweep (scores, budget, plot, export)."""

from __future__ import annotations

import json

import pytest
import tinysweep
import torch
from safetensors.torch import load_file

from rewind import engine, pareto, search, sweep
from rewind.cli import main
from rewind.errors import RewindError
from rewind.evaluate import harness
from rewind.results import BASE, Point, Scored
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


def test_compass_climbs_a_separable_objective_on_its_grid():
    goal = (0.35, 0.8, 0.1)
    calls = []

    def value(x):
        calls.append(x)
        return -sum((a - g) ** 2 for a, g in zip(x, goal))

    best = search.compass(value, (0.5, 0.5, 0.5), step=0.2, min_step=0.05)
    assert best == pytest.approx(goal, abs=0.026)  # the 0.05 grid's nearest points
    assert all(0 <= a <= 1 and abs(a / 0.05 - round(a / 0.05)) < 1e-9 for x in calls for a in x)
    assert search.compass(value, (0.5, 0.5, 0.5), 0.2, 0.05) == best  # deterministic


def test_compass_stops_at_the_budget_and_keeps_the_best_seen():
    seen = []

    def value(x):
        seen.append(x)
        return x[0]  # climbing forever towards 1

    best = search.compass(value, (0.0,), step=0.05, min_step=0.05, budget=lambda: len(seen) < 4)
    assert len(seen) == 4 and best == (0.15,)


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
    with pytest.raises(SystemExit) as code:
        main(["search", *args[1:], "--groups", "layer", "--budget", "3", "--objective", "max-sum"])
    assert code.value.code == 0
    return root, base, adapter, out


def test_search_records_its_candidates_in_the_sweep(searched):
    root, base, adapter, out = searched
    report = json.loads((out / "search.json").read_text())
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    validation = [r for r in records if r["split"] == "validation"]
    scheduled = {r["point"] for r in validation if r["layers"]}
    assert 1 <= report["evaluations"] <= 3 and len(scheduled) == report["evaluations"]
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


def test_a_searched_point_scores_what_its_schedule_scores(searched):
    """Independent check: put a fresh model at the schedule and evaluate it with the harness directly."""
    root, base, adapter, out = searched
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    point = next(r for r in records if r["layers"] and r["split"] == "validation")
    rw = engine.open(str(base), str(adapter), device="cpu", dtype="fp32")
    rw.set(point["alpha"], Schedule("list", tuple(point["layers"])))
    suites = harness.resolve_suites([tinysweep.TARGET, tinysweep.GENERAL])
    results = harness.Evaluator(rw.model, rw.tokenizer, suites, "validation", limit=2, batch_size=8).run()
    mine = {r["task"]: r["score"] for r in records if r["point"] == point["point"] and r["split"] == "validation"}
    assert {r.task: r.score for r in results} == mine


def test_export_from_writes_a_selected_schedule(searched, tmp_path):
    root, base, adapter, out = searched
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
    root, base, adapter, out = searched
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
