"""Per-item results (issue 17): items.jsonl beside results.jsonl, its per-item scores giving each task's score
exactly (a ratio-of-sums task through its linearized values), and its resume after a kill."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import tinysweep

from rewind import items, report, stats, sweep
from rewind.results import ResultsLog

GENERAL = [tinysweep.GENERAL, "general_offline_wiki_ppl"]


def _spec(root, **kw):
    fields = dict(
        adapter=str(root / "tlora"),
        base=str(root / "tbase"),
        alphas=[0, 1],
        target=[tinysweep.TARGET],
        general=GENERAL,
        limit=4,
        dtype="fp32",
        device="cpu",
    )
    return sweep.SweepSpec(**{**fields, **kw})


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("items")
    tinysweep.make(root)
    summary = sweep.Sweep(_spec(root), root / "sweep").run(progress=False)
    return root, summary


def test_items_line_per_point_split_task_with_the_task_score(swept):
    root, _ = swept
    results, logged = (
        tinysweep.read_jsonl(root / "sweep" / "results.jsonl"),
        tinysweep.read_jsonl(root / "sweep" / "items.jsonl"),
    )
    key = lambda r: (r["point"], r["split"], r["task"])  # noqa: E731
    assert sorted(map(key, logged)) == sorted(map(key, results))
    score = {key(r): r["score"] for r in results}
    for line in logged:
        x = items.scores(line)
        assert x is not None and len(x) == len(line["doc"]) == 4, line["task"]
        assert float(x.mean()) == pytest.approx(score[key(line)], rel=1e-12, abs=1e-12)
    ppl = next(line for line in logged if line["task"] == "general_offline_wiki_ppl")
    assert ppl["aggregation"] == "bits_per_byte" and all(w > 1 for w in ppl["weights"])  # (loglikelihood, bytes)
    assert "items" not in results[0]  # arrays stay out of results.jsonl


def test_bootstrap_estimates_are_the_reported_scores(swept):
    root, summary = swept
    logged = tinysweep.read_jsonl(root / "sweep" / "items.jsonl")
    boot = items.bootstrap(logged, "validation", ["base@0", "final@1"], [tinysweep.TARGET], GENERAL)
    for row in summary["points"]:
        for axis in ("target", "general"):
            assert boot.estimate(row["key"], axis) == pytest.approx(row[axis], abs=1e-9)
            interval = boot.interval(row["key"], axis)
            assert interval.low <= row[axis] + 1e-9 and row[axis] - 1e-9 <= interval.high


def test_ratio_task_interval_matches_the_exact_ratio_bootstrap():
    """bits_per_byte from (loglikelihood, bytes) pairs: the linearized items give lm-eval's score exactly, and
    their bootstrap spread is the exact ratio-of-sums bootstrap's to within a few percent at 400 items."""
    rng = np.random.default_rng(0)
    size = rng.integers(200, 2000, 400).astype(float)
    loglik = -size * rng.normal(0.9, 0.25, 400)
    line = {"metric": "bits_per_byte,none", "aggregation": "bits_per_byte", "values": list(loglik)}
    line["weights"] = list(size)
    x = items.scores(line)
    reported = 100 * 2 ** (loglik.sum() / size.sum() / math.log(2))  # lm-eval's bits_per_byte, then SCORE_MAPS
    assert x.mean() == pytest.approx(reported, rel=1e-12)
    draws = rng.integers(0, 400, (4000, 400))
    exact = 100 * np.exp(loglik[draws].sum(1) / size[draws].sum(1))
    assert x[draws].mean(1).std() == pytest.approx(exact.std(), rel=0.05)


def test_a_task_whose_items_do_not_give_its_score_has_none():
    class Result:
        suite, task, metric, score = "s", "group", "acc,none", 40.0
        items = {"doc": [0, 1], "values": [1.0, 1.0], "weights": [1.0, 1.0], "aggregation": "mean"}

    line = items.line({"point": "base@0"}, Result())
    assert line["values"] is None and items.scores(line) is None


def _cut(path, keep: int, torn: bool):
    """Keep the first `keep` lines of `path`, and half of the next one if `torn`."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]) + (lines[keep][: len(lines[keep]) // 2] if torn else ""))


@pytest.mark.parametrize("torn_items", [True, False], ids=["killed-in-items", "killed-before-results"])
def test_a_point_cut_between_its_items_and_results_is_evaluated_again(swept, tmp_path, torn_items):
    root, summary = swept
    out = tmp_path / "sweep"
    shutil.copytree(root / "sweep", out)
    (out / "summary.json").unlink()
    tasks = 1 + len(GENERAL)
    before = tinysweep.read_jsonl(out / "results.jsonl")
    _cut(out / "results.jsonl", len(before) - tasks, torn=False)  # the last point's results gone
    if torn_items:  # the kill came inside the last point's items write
        _cut(out / "items.jsonl", len(tinysweep.read_jsonl(out / "items.jsonl")) - tasks, torn=True)
    again = sweep.Sweep(_spec(root), out).run(progress=False)
    scores = lambda lines: [(r["point"], r["split"], r["task"], r["score"]) for r in lines]  # noqa: E731
    assert scores(tinysweep.read_jsonl(out / "results.jsonl")) == scores(
        before
    )  # that point evaluated once more, the same
    assert again["selected"]["key"] == summary["selected"]["key"] and again["frontier"] == summary["frontier"]
    logged = items.ItemsLog(out / "items.jsonl").records()
    last = [r for r in logged if (r["point"], r["split"]) == (logged[-1]["point"], logged[-1]["split"])]
    assert len(last) == tasks * (1 if torn_items else 2)  # a second, whole copy where the first was whole
    assert [r["part"] for r in logged[-tasks:]] == [[i, tasks] for i in range(tasks)]


def test_results_without_items_are_not_done(swept, tmp_path):
    """A point whose items are gone is evaluated again, so every point's intervals can be computed."""
    root, _ = swept
    out = tmp_path / "sweep"
    shutil.copytree(root / "sweep", out)
    logged = tinysweep.read_jsonl(out / "items.jsonl")
    kept = [line for line in logged if line["point"] != "final@1"]
    (out / "items.jsonl").write_text("".join(json.dumps(line) + "\n" for line in kept))
    session = sweep.Sweep(_spec(root), out).session
    session.open()
    assert ("final@1", "validation") not in session.finished() and ("base@0", "validation") in session.finished()
    assert len(ResultsLog(out / "results.jsonl").records()) == len(logged)


def test_bootstrap_refuses_points_on_different_items(swept):
    root, _ = swept
    logged = tinysweep.read_jsonl(root / "sweep" / "items.jsonl")
    for line in logged:
        if line["point"] == "final@1" and line["task"] == tinysweep.TARGET and line["split"] == "validation":
            line["doc"] = [d + 100 for d in line["doc"]]
    with pytest.raises(stats.RewindError, match="items differ"):
        items.bootstrap(logged, "validation", ["base@0", "final@1"], [tinysweep.TARGET], GENERAL)


# -- the report on intervals (hand-made lines, no model) ------------------------------------------------------------


def _point_lines(key: str, alpha: float, path: str, correct: dict[str, np.ndarray]):
    """(results lines, items lines) of one validation point with 0/1 items per task."""
    named = {"run": "r", "point": key, "path": path, "alpha": alpha, "layers": None, "split": "validation"}
    res, logged = [], []
    for role, task in (("target", "t"), ("general", "g")):
        head = {**named, "role": role, "suite": task, "task": task, "metric": "acc,none"}
        res.append({**head, "score": 100 * correct[task].mean(), "point_seconds": 1.0})
        logged.append({**head, "doc": list(range(len(correct[task]))), "values": list(map(float, correct[task]))})
        logged[-1] |= {"weights": [1.0] * len(correct[task]), "aggregation": "mean"}
    return res, logged


def _report(half_target: np.ndarray, n: int = 400) -> report.Report:
    rng = np.random.default_rng(1)
    base = {"t": rng.random(n) < 0.3, "g": rng.random(n) < 0.6}
    final = {"t": base["t"] | (rng.random(n) < 0.2), "g": base["g"]}  # target up, general as the base
    half = {"t": half_target, "g": base["g"] & (rng.random(n) < 0.995)}
    lines = [
        _point_lines("base@0", 0.0, "base", base),
        _point_lines("final@1", 1.0, "final", final),
        _point_lines("linear@0.5", 0.5, "linear", half),
    ]
    return report.Report(tinysweep.RECORD, [r for res, _ in lines for r in res], [r for _, it in lines for r in it])


def test_the_report_keeps_the_final_when_nothing_is_confidently_better():
    rng = np.random.default_rng(1)
    base_t = rng.random(400) < 0.3
    rep = _report(base_t | (rng.random(400) < 0.2))  # linear@0.5 as good as the final on target, no better
    summary = rep.summary()
    assert summary["selected"]["key"] == "final@1" and summary["verdict"].startswith("final@1 kept")
    for row in summary["points"]:
        for axis in ("target", "general"):
            low, high = row[f"{axis}_ci"]
            assert low < row[axis] < high
    assert set(summary["evidence"]) == {"base", "final"}
    assert summary["evidence"]["final"]["target"] == {"delta": 0.0, "ci": [0.0, 0.0]}
    assert "verdict (0.9 confidence): final@1 kept" in report.table(summary)


def test_the_report_leaves_the_final_for_a_confidently_better_point():
    rep = _report(np.ones(400, bool))  # linear@0.5 solves every target item, general barely moves
    summary = rep.summary()
    assert summary["selected"]["key"] == "linear@0.5"
    assert summary["verdict"].startswith("linear@0.5: target +")
    delta = summary["evidence"]["final"]["target"]
    final = summary["final_point"]["target"]
    assert delta["ci"][0] > 0 and delta["delta"] == pytest.approx(summary["selected"]["target"] - final)
    text = report.table(summary)
    assert "selected - final target +" in text and "100.00 [100.00,100.00]" in text.splitlines()[6]


def test_a_report_without_items_has_no_intervals():
    rep = _report(np.ones(400, bool))
    plain = report.Report(tinysweep.RECORD, rep._records)
    summary = plain.summary()
    assert "verdict" not in summary and "target_ci" not in summary["points"][0]
    assert summary["selected"]["key"] == "linear@0.5"  # on the scores alone, as before
    assert "verdict" not in report.table(summary)


def test_the_sweep_summary_has_intervals_and_evidence(swept):
    root, summary = swept
    assert summary["confidence"] == 0.9 and set(summary["evidence"]) == {"base", "final"}
    assert all(len(row["target_ci"]) == len(row["general_ci"]) == 2 for row in summary["points"])
    assert summary["selected"]["test"]["general_ci"] is not None
    assert (root / "sweep" / "pareto.png").stat().st_size > 10_000


def test_a_point_evaluated_twice_on_the_cpu_scores_every_item_the_same(swept, tmp_path):
    """Deterministic evaluation: the same weights give the same per-item results, also after the model moved away
    and back; the base evaluated again (as a sweep on CUDA does) reports a noise floor of zero flips."""
    from rewind.results import FINAL, VALIDATION, Point

    root, _ = swept
    out = tmp_path / "sweep"
    shutil.copytree(root / "sweep", out)
    session = sweep.Sweep(_spec(root), out).session
    session.open()
    evaluator, half = session.evaluators[VALIDATION], Point.at("linear", 0.5)
    session._move(half)
    first = [r.items for r in evaluator.run()]
    session._move(FINAL)
    session._move(half)
    assert [r.items for r in evaluator.run()] == first
    session.repeat_base()
    session.repeat_base()  # once per run
    summary = report.Report.read(out).summary()
    floor = summary["noise_floor"]
    assert floor["point"] == "base@0" and floor["items"] == dict.fromkeys([tinysweep.TARGET, *GENERAL], 4)
    assert floor["flips"] == dict.fromkeys([tinysweep.TARGET, *GENERAL], 0)
    assert sum(line["split"] == "repeat" for line in tinysweep.read_jsonl(out / "items.jsonl")) == 3
    assert "noise floor: base@0 evaluated twice, 0 of 12" in report.table(summary)


# -- the search on paired statistics ----------------------------------------------------------------------------


def _boot(points: dict[str, dict[str, np.ndarray]]) -> stats.Bootstrap:
    return stats.paired_bootstrap(points, {"target": ["t"], "general": ["g"]})


def test_the_search_moves_only_for_a_confidently_better_candidate():
    from rewind import search
    from rewind.report import Rule

    rng = np.random.default_rng(0)
    t, g = (rng.random(300) < 0.4) * 100.0, (rng.random(300) < 0.6) * 100.0
    noisy = t.copy()
    noisy[np.flatnonzero(t == 0)[:2]] = 100  # two items more: ahead on the score, not confidently
    clear = np.maximum(t, (rng.random(300) < 0.3) * 100.0)
    boot = _boot({"base": {"t": t, "g": g}, "noisy": {"t": noisy, "g": g}, "clear": {"t": clear, "g": g}})
    rule = Rule("max-target-within", tolerance=1.0)
    assert boot.estimate("noisy", "target") > boot.estimate("base", "target")
    assert search.confidently_better(boot, rule, ["noisy", "clear"], "base", "base") == ["clear"]
    assert search.confidently_better(boot, Rule("max-sum"), ["clear"], "noisy", "base") == ["clear"]
    worse_general = {"t": np.full(300, 100.0), "g": g * (rng.random(300) < 0.8)}  # all target, general lost
    boot = _boot({"base": {"t": t, "g": g}, "far": worse_general, "clear": {"t": clear, "g": g}})
    assert search.confidently_better(boot, rule, ["far"], "clear", "base") == []  # not within tolerance of the base
    assert search.confidently_better(boot, rule, ["clear"], "far", "base") == ["clear"]


def test_a_round_tests_its_candidates_jointly():
    """A gain that clears the interval alone does not clear it among 20 rivals tested with it (each pure noise):
    the round's chance of a lucky winner stays that of one comparison."""
    from rewind import search
    from rewind.report import Rule

    rng = np.random.default_rng(3)
    t, g = (rng.random(400) < 0.4) * 100.0, (rng.random(400) < 0.6) * 100.0
    gain = t.copy()
    gain[np.flatnonzero(t == 0)[:6]] = 100  # six items more, none fewer
    rivals = {f"r{i}": {"t": np.where(rng.random(400) < 0.03, 100 - t, t), "g": g} for i in range(20)}
    boot = _boot({"base": {"t": t, "g": g}, "gain": {"t": gain, "g": g}, **rivals})
    rule = Rule("max-sum")
    assert search.confidently_better(boot, rule, ["gain"], "base", "base") == ["gain"]
    assert "gain" not in search.confidently_better(boot, rule, ["gain", *rivals], "base", "base")


def test_per_item_reads_numbers_and_pairs_only():
    from rewind.evaluate.harness import per_item

    class Task:
        def aggregation(self):
            from lm_eval.api.metrics import bits_per_byte, mean

            return {"acc": mean, "bits_per_byte": bits_per_byte, "bleu": mean}

    samples = [
        {"doc_id": i, "filter": "none", "acc": i % 2, "bits_per_byte": (-3.0 * i, 5.0), "bleu": ("ref", "pred")}
        for i in range(3)
    ] + [{"doc_id": 0, "filter": "strict", "acc": 1}]
    out = {"samples": {"task": samples}}
    assert per_item(out, {"task": Task()}, "acc,none") == {
        "doc": [0, 1, 2],
        "values": [0.0, 1.0, 0.0],
        "weights": [1.0, 1.0, 1.0],
        "aggregation": "mean",
    }
    ratio = per_item(out, {"task": Task()}, "bits_per_byte,none")
    assert ratio["values"] == [0.0, -3.0, -6.0] and ratio["weights"] == [5.0] * 3
    assert ratio["aggregation"] == "bits_per_byte"
    assert per_item(out, {"task": Task()}, "bleu,none") is None
    assert per_item({"samples": {}}, {"task": Task()}, "acc,none") is None
