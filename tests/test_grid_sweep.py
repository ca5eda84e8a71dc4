"""Grid mode through lm-eval (issue 16): one batched pass per request kind, all tasks together, answers every point
of a group as the in-place model answers each point alone (fp32, CPU, greedy), and the sweep's results, resume and
table follow."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import tinysweep
import torch
from lm_eval.api.task import Task
from lm_eval.models.huggingface import HFLM
from tiny import make_adapter

from rewind import engine, grid, grouping, models, results, sweep
from rewind.evaluate import harness
from rewind.evaluate.grid_lm import GridLM, score
from rewind.grid import stacked
from rewind.report import table
from rewind.schedule import Schedule
from rewind.session import Session

# One task per request type: generate_until, loglikelihood (multiple choice), loglikelihood_rolling (perplexity).
TASKS = ["math_offline_basic_arithmetic", "general_offline_truthfulqa_mc1", "general_offline_wiki_ppl"]
REL = 1e-5


class Capturing:
    """Keeps every response the LM returns, by request type, in order."""

    def start(self):
        self.seen = {"generate_until": [], "loglikelihood": [], "loglikelihood_rolling": []}

    def generate_until(self, requests, disable_tqdm=False):
        out = super().generate_until(requests, disable_tqdm)
        self.seen["generate_until"] += out
        return out

    def loglikelihood(self, requests, disable_tqdm=False):
        out = super().loglikelihood(requests, disable_tqdm)
        self.seen["loglikelihood"] += out
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        out = super().loglikelihood_rolling(requests, disable_tqdm)
        self.seen["loglikelihood_rolling"] += out
        return out


class PointLM(Capturing, HFLM):
    pass


class CapturingGridLM(Capturing, GridLM):
    pass


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gridsweep")
    base = tinysweep.chat_base(root / "base", layers=3)
    for kind in ("lora", "oft", "boft"):
        make_adapter(kind, copy.deepcopy(base), root / kind)
    return root


def _close(a, b) -> bool:
    if isinstance(a, str):
        return a == b
    if isinstance(a, tuple):
        return a[1] == b[1] and _close(a[0], b[0])
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-9)


def _install(kind: str, rw):
    """The branches' grid on rw, or a stacked grid of rw's path."""
    return grid.install(rw) if kind == "branches" else stacked.install({rw.path_name: rw}.__getitem__, rw)


def _responses(rw, evaluator, lm, points, grid_kind="branches"):
    """Each point's captured responses and TaskResults, point by point (in place) or from one grid pass."""
    out = []
    if isinstance(lm, GridLM):
        g = _install(grid_kind, rw)
        out = _per_point_grid(evaluator, lm, g, points)
        g.remove()
        return out
    for k, p in enumerate(points):
        rw.set(p.alpha, p.schedule)
        for entry in evaluator.entries:
            lm.start()
            result = evaluator.score(entry, lm)
            out.append((k, entry.name, (result, lm.seen)))
    rw.set(0.0)
    return out


def _per_point_grid(evaluator, lm, g, points):
    """grid_lm.score of all the tasks together, with each point's responses: what the pass kept for it, asked again
    by the task's own evaluate()."""
    out = []
    lm.start()
    scored = score(evaluator, evaluator.entries, lm, g, points)
    for i, (entry, per_point) in enumerate(zip(evaluator.entries, scored)):
        for k, result in enumerate(per_point):
            lm.start()
            with lm.replay(k, str(i)):
                evaluator.score(entry, lm)
            out.append((k, entry.name, (result, lm.seen)))
    return out


CASES = [
    ("lora", "linear", None),
    ("oft", "cayley", None),
    ("oft", "dense", None),
    ("lora", "linear", "ramp"),  # a per-layer schedule: each point's layers at their own alphas
]


@pytest.mark.parametrize("grid_kind", ["branches", "stacked"])
@pytest.mark.parametrize("kind,path,layers", CASES)
def test_grid_pass_answers_as_each_point_alone(kind, path, layers, grid_kind, root):
    model, tokenizer = _load(root)
    rw = engine.attach(model, root / kind, path=path)
    schedule = Schedule.parse(layers)
    points = [engine.Point(rw.path_name, a, schedule) for a in (0.0, 0.5, 1.0)]
    suites = harness.resolve_suites(TASKS)
    evaluator = harness.Evaluator(model, tokenizer, suites, limit=3, batch_size=2, chat_template="off")
    alone = _responses(rw, evaluator, PointLM(pretrained=model, tokenizer=tokenizer, batch_size=2), points)
    gridded = _responses(rw, evaluator, CapturingGridLM(model, tokenizer, 2), points, grid_kind)
    alone, gridded = sorted(alone, key=_by_point_task), sorted(gridded, key=_by_point_task)
    assert [(k, t) for k, t, _ in alone] == [(k, t) for k, t, _ in gridded]
    for (k, task, (a, seen_a)), (_, _, (g, seen_g)) in zip(alone, gridded):
        assert math.isclose(a.value, g.value, rel_tol=REL), (k, task, a.value, g.value)
        assert a.metrics.keys() == g.metrics.keys()
        assert all(math.isclose(a.metrics[m], g.metrics[m], rel_tol=REL, abs_tol=1e-9) for m in a.metrics)
        for kind_ in seen_a:
            assert len(seen_a[kind_]) == len(seen_g[kind_])
            assert all(_close(x, y) for x, y in zip(seen_a[kind_], seen_g[kind_])), (k, task, kind_)
    # Not void: every request type was asked, with text generated, and each type's answers move with the point.
    merged: dict = {}
    for k, _, (_, seen) in alone:
        for type_, responses in seen.items():
            merged.setdefault(k, {}).setdefault(type_, []).extend(responses)
    assert all(merged[0][type_] for type_ in merged[0]) and len(merged[0]) == 3
    assert all(merged[0][type_] != merged[2][type_] for type_ in merged[0])
    generated = merged[0]["generate_until"] + merged[2]["generate_until"]
    assert any(s.strip() for s in generated), "no generation had any text: test is void"


def test_a_group_builds_each_request_once(root, monkeypatch):
    """lm-eval builds a task's requests (prompts, the chat template) at a group's first point only; every point is
    still scored as alone, item by item."""
    model, tokenizer = _load(root)
    rw = engine.attach(model, root / "lora")
    points = [engine.Point(rw.path_name, a) for a in (0.0, 0.5, 1.0)]
    evaluator = harness.Evaluator(model, tokenizer, harness.resolve_suites(TASKS), limit=3, batch_size=2)
    assert any(entry.chat and evaluator.chat for entry in evaluator.entries)  # prompts through the chat template
    alone = []
    for p in points:
        rw.set(p.alpha)
        alone.append([evaluator.score(entry) for entry in evaluator.entries])
    rw.set(0.0)
    builds, build = Counter(), Task.build_all_requests

    def counted(self, **kwargs):
        builds[self.config.task] += 1
        return build(self, **kwargs)

    monkeypatch.setattr(Task, "build_all_requests", counted)
    g = grid.install(rw)
    gridded = score(evaluator, evaluator.entries, GridLM(model, tokenizer, 2), g, points)
    g.remove()
    assert builds == dict.fromkeys(TASKS, 1)
    assert not any("build_all_requests" in vars(leaf) for e in evaluator.entries for leaf in e.loaded["tasks"].values())
    for k in range(len(points)):
        for a, g_ in zip(alone[k], (per_point[k] for per_point in gridded)):
            assert (a.task, a.metric, a.n, a.items["doc"]) == (g_.task, g_.metric, g_.n, g_.items["doc"])
            assert all(
                math.isclose(x, y, rel_tol=REL, abs_tol=1e-9) for x, y in zip(a.items["values"], g_.items["values"])
            )
            assert math.isclose(a.value, g_.value, rel_tol=REL), (k, a.task, a.value, g_.value)
    assert [r.value for r in alone[0]] != [r.value for r in alone[2]]  # the points differ: not one point thrice


def test_tasks_generate_in_one_pass(root, monkeypatch):
    """Two generation tasks with the same generation arguments decode in one pass for every point (a pass waits for
    its slowest row once, not once per task), and each point of each task scores as alone."""
    model, tokenizer = _load(root)
    rw = engine.attach(model, root / "lora")
    points = [engine.Point(rw.path_name, a) for a in (0.0, 0.5, 1.0)]
    tasks = ["math_offline_basic_arithmetic", "math_offline_chain_sum"]
    evaluator = harness.Evaluator(model, tokenizer, harness.resolve_suites(tasks), limit=3, batch_size=3)
    alone = _responses(rw, evaluator, PointLM(pretrained=model, tokenizer=tokenizer, batch_size=3), points)
    passes, original = [], HFLM._model_generate

    def counted(self, context, *args, **kwargs):
        passes.append(context.shape[0])
        return original(self, context, *args, **kwargs)

    monkeypatch.setattr(HFLM, "_model_generate", counted)
    gridded = _responses(rw, evaluator, CapturingGridLM(model, tokenizer, 3), points)
    assert passes == [2 * 3 * len(points)], passes  # both tasks' 3 items at 3 points: one pass
    texts = {(k, task): seen["generate_until"] for k, task, (_, seen) in alone}
    assert texts == {(k, task): seen["generate_until"] for k, task, (_, seen) in gridded}
    assert texts[0, tasks[0]] != texts[2, tasks[0]], "the points answer alike: test is void"


def test_evaluation_never_runs_cudnn_attention(root):
    """Point by point and in a grid pass, the model runs with cuDNN's attention off (it plans every new shape;
    harness.attention_backends), and the setting is the caller's again afterwards."""
    model, tokenizer = _load(root)
    rw = engine.attach(model, root / "lora")
    points = [engine.Point(rw.path_name, a) for a in (0.0, 1.0)]
    evaluator = harness.Evaluator(model, tokenizer, harness.resolve_suites(TASKS[:1]), limit=2, batch_size=2)
    cudnn = []
    hook = model.register_forward_pre_hook(lambda *_: cudnn.append(torch.backends.cuda.cudnn_sdp_enabled()))
    try:
        _responses(rw, evaluator, PointLM(pretrained=model, tokenizer=tokenizer, batch_size=2), points[:1])
        point_calls = len(cudnn)
        _responses(rw, evaluator, CapturingGridLM(model, tokenizer, 2), points)
    finally:
        hook.remove()
    assert 0 < point_calls < len(cudnn), (point_calls, len(cudnn))  # both ways ran the model
    assert not any(cudnn)
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_a_task_asking_two_kinds_is_answered_in_turn(root):
    """A task whose evaluate() asks loglikelihood and then generation requests (a group of mixed tasks) is asked
    again after each answer until all its requests are answered; every point gets its own answers."""
    from lm_eval.api.instance import Instance

    model, tokenizer = _load(root)
    rw = engine.attach(model, root / "lora")
    points = [engine.Point(rw.path_name, a) for a in (0.0, 1.0)]
    likelihood = [Instance("loglikelihood", {}, ("2 + 2 =", " 4"), 0)]
    generation = [Instance("generate_until", {}, ("2 + 2 =", {"until": ["\n"], "max_gen_toks": 4}), 0)]

    @dataclasses.dataclass
    class Answers:
        answers: tuple
        seconds: float = 0.0

    class Mixed:
        def score(self, entry, lm):
            return Answers((lm.loglikelihood(likelihood), lm.generate_until(generation)))

    leaf = SimpleNamespace(build_all_requests=lambda **kwargs: None)
    entry = SimpleNamespace(name="mixed", loaded={"tasks": {"mixed": leaf}})
    g = grid.install(rw)
    (gridded,) = score(Mixed(), [entry], GridLM(model, tokenizer, 2), g, points)
    g.remove()
    hf = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    for p, result in zip(points, gridded):
        rw.set(p.alpha)
        (ll,), (text,) = result.answers
        ((expected_ll, greedy),), (expected_text,) = hf.loglikelihood(likelihood), hf.generate_until(generation)
        assert math.isclose(ll[0], expected_ll, rel_tol=REL) and ll[1] == greedy and text == expected_text
    rw.set(0.0)
    assert gridded[0].answers[0] != gridded[1].answers[0], "the points answer alike: test is void"


def _by_point_task(item):
    return item[0], item[1]


def _load(root):
    return models.load_base(str(root / "base"), "cpu", "fp32")


def _spec(root, adapter, **kw):
    fields = dict(
        adapter=str(root / adapter),
        base=str(root / "base"),
        alphas=[0, 0.5, 1],
        target=TASKS[:1],
        general=TASKS[1:],
        limit=2,
        dtype="fp32",
        device="cpu",
        batch_size=2,
    )
    return sweep.SweepSpec(**{**fields, **kw})


def _lines(out):
    return [json.loads(line) for line in (out / results.RESULTS_FILE).read_text().splitlines()]


def _values(out):
    return {(r["point"], r["split"], r["task"]): r["value"] for r in _lines(out)}


@pytest.fixture(scope="module")
def point_by_point(root):
    out = root / "sweep-points"
    sweep.Sweep(_spec(root, "lora", batch_points=1), out).run(progress=False)
    return out


@pytest.fixture(params=["stacked", "branches"])
def grid_kind(request, monkeypatch):
    """The session's grid: stacked where the copies fit (the tiny model's always do), the branches without room."""
    if request.param == "branches":
        monkeypatch.setattr(grouping, "STACK_SHARE", 0.0)
    return request.param


def test_sweep_grid_equals_point_by_point(root, point_by_point, grid_kind):
    out = root / f"sweep-grid-{grid_kind}"
    summary = sweep.Sweep(_spec(root, "lora", batch_points=3), out).run(progress=False)
    grid_values, point_values = _values(out), _values(point_by_point)
    assert grid_values.keys() == point_values.keys()
    assert all(math.isclose(grid_values[k], point_values[k], rel_tol=REL) for k in grid_values)
    assert {(r["ran"], r["group"]) for r in _lines(out) if r["split"] == results.VALIDATION} == {("grid", 3)}
    assert {(r["ran"], r["group"]) for r in _lines(point_by_point)} == {("point", 1)}
    assert all(row["ran"] == "grid" for row in summary["points"])
    assert "ran" in table(summary) and " grid " in table(summary)


@pytest.mark.parametrize("kind,path", [("lora", "linear"), ("oft", "cayley")])
def test_searched_points_grid_together(kind, path, root, grid_kind):
    """`rewind search`'s candidates (per-layer alphas) passed to one evaluate run as one grid pass of their path,
    every row at its own layers, and score as each point alone."""
    points = [results.Point.at(path, 0.5, layers) for layers in ([0.3, 0.5, 0.5], [0.5, 0.7, 1.0], [1.0, 0.0, 0.5])]
    values = {}
    for per_pass in (3, 1):
        out = root / f"searched-{kind}-{per_pass}-{grid_kind}"
        session = Session(_spec(root, kind, paths=[path], batch_points=per_pass), out)
        session.open()
        lines = session.evaluate(points, results.VALIDATION)
        assert {(r["ran"], r["group"]) for r in lines} == {("grid", 3) if per_pass == 3 else ("point", 1)}
        values[per_pass] = {(r["point"], r["task"]): r["value"] for r in lines}
    assert values[3].keys() == values[1].keys() and len(values[3]) == 3 * len(TASKS)
    assert all(math.isclose(values[3][k], values[1][k], rel_tol=REL) for k in values[1])
    perplexities = {values[1][p.key, TASKS[2]] for p in points}
    assert len(perplexities) == 3, "the schedules score alike: test is void"


def test_auto_on_cpu_is_point_by_point(root, point_by_point):
    out = root / "sweep-auto"
    summary = sweep.Sweep(_spec(root, "lora"), out).run(progress=False)
    assert {(r["ran"], r["group"]) for r in _lines(out)} == {("point", 1)}
    assert all(row["ran"] == "point" for row in summary["points"])
    assert _values(out) == _values(point_by_point)


def test_auto_on_a_gpu_grids_generation_and_small_models():
    gpu = SimpleNamespace(device=torch.device("cuda"), parameters=lambda: [torch.empty(10)])
    cpu = SimpleNamespace(device=torch.device("cpu"), parameters=lambda: [torch.empty(10)])
    assert grouping.grids(["generate_until"], gpu, "auto") and grouping.grids(["loglikelihood"], gpu, "auto")
    assert not grouping.grids(["generate_until"], cpu, "auto") and grouping.grids(["loglikelihood"], cpu, 4)
    weights = torch.empty(grouping.SMALL_MODEL + 1, device="meta")
    large = SimpleNamespace(device=torch.device("cuda"), parameters=lambda: [weights])
    assert grouping.grids(["generate_until"], large, "auto") and not grouping.grids(["loglikelihood"], large, "auto")
    assert grouping.points_per_pass("auto", cpu.device) == 1 and grouping.points_per_pass("auto", gpu.device) == "auto"


def test_path_without_branch_falls_back(root, grid_kind):
    """BOFT's own path has no per-row branch: without room for stacks its points run one by one, as
    --batch-points 1 runs them; stacked, they grid and score the same."""
    out = root / f"sweep-boft-{grid_kind}"
    summary = sweep.Sweep(_spec(root, "boft", batch_points=3), out).run(progress=False)
    assert summary["paths"] == ["boft"]
    assert {r["ran"] for r in _lines(out)} == {"point" if grid_kind == "branches" else "grid"}
    alone = root / "sweep-boft-points"
    if not alone.exists():
        sweep.Sweep(_spec(root, "boft", batch_points=1), alone).run(progress=False)
    values, expected = _values(out), _values(alone)
    assert values.keys() == expected.keys()
    assert all(math.isclose(values[k], expected[k], rel_tol=REL) for k in expected)


def test_stacks_that_do_not_fit_leave_the_branches(root, monkeypatch):
    """Where a copy per point of the group would take more than STACK_SHARE of free memory (counting the stacks
    already held as free), the session grids with the branches, one path per pass."""
    from rewind.evaluate import grid_lm

    session = Session(_spec(root, "oft", paths=["cayley", "dense"], alphas=[0.5, 1.0], batch_points=8), root / "x")
    session.open()
    stack = session._stack(session.planned(), 8)
    assert stack is not None, "the tiny model's copies fit: test is void"
    per_point = stack.bytes_per_point()
    monkeypatch.setattr(grid_lm, "free_bytes", lambda device: int(2.5 * per_point / grouping.STACK_SHARE))
    assert session._stack(session.planned()[:2], 8) is stack  # two points fit beside the stacks held
    lines = session.evaluate(session.planned(), results.VALIDATION)
    by_path = {r["point"].split("@")[0]: r["group"] for r in lines}
    assert by_path["cayley"] == by_path["base"] and by_path["dense"] != by_path["cayley"], by_path
    ran = {(r["point"], r["ran"]) for r in lines}
    assert ran == {("base@0", "grid"), ("final@1", "grid"), ("cayley@0.5", "grid"), ("dense@0.5", "point")}  # alone


def test_two_paths_share_a_stacked_pass(root):
    """Stacked, the cayley and dense points of an OFT sweep run in one group per pass, and score as alone."""
    spec = dict(paths=["cayley", "dense"], alphas=[0.5, 1.0])
    out, alone = root / "sweep-two-paths", root / "sweep-two-paths-points"
    sweep.Sweep(_spec(root, "oft", batch_points=8, **spec), out).run(progress=False)
    sweep.Sweep(_spec(root, "oft", batch_points=1, **spec), alone).run(progress=False)
    validation = [r for r in _lines(out) if r["split"] == results.VALIDATION]
    assert {r["point"].split("@")[0] for r in validation} >= {"cayley", "dense"}
    assert {(r["ran"], r["group"]) for r in validation} == {("grid", len({r["point"] for r in validation}))}
    values, expected = _values(out), _values(alone)
    assert values.keys() == expected.keys()
    assert all(math.isclose(values[k], expected[k], rel_tol=REL) for k in expected)


def test_resume_after_a_partial_group(root, point_by_point, monkeypatch):
    """Killed while a group's points are written: the points written stay, the rest run again, none twice."""
    out = root / "sweep-killed"
    appended = []
    original = results.ResultsLog.append

    def append_then_die(self, records):
        if len(appended) == 1:
            raise KeyboardInterrupt
        appended.append(records[0]["point"])
        original(self, records)

    monkeypatch.setattr(results.ResultsLog, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        sweep.Sweep(_spec(root, "lora", batch_points=3), out).run(progress=False)
    monkeypatch.setattr(results.ResultsLog, "append", original)
    assert {r["point"] for r in _lines(out)} == set(appended)
    sweep.Sweep(_spec(root, "lora", batch_points=3), out).run(progress=False)
    validation = [r for r in _lines(out) if r["split"] == results.VALIDATION]
    assert len(validation) == 3 * len(TASKS)  # each point once
    assert {r["group"] for r in validation if r["point"] not in appended} == {2}  # the rest: one group of two
    values, expected = _values(out), _values(point_by_point)
    assert all(math.isclose(values[k], expected[k], rel_tol=REL) for k in expected)


def test_sampled_pass_at_k_runs_in_grid_mode(root):
    """pass@k: every point's rows sample on their own; each point is scored (not compared: samples differ)."""
    out = root / "sweep-passk"
    spec = _spec(root, "lora", batch_points=3, target=TASKS[:1], general=TASKS[1:2], pass_k=[1, 2])
    summary = sweep.Sweep(spec, out).run(progress=False)
    sampled = [r for r in _lines(out) if r["role"] == "pass@k" and r["split"] == results.VALIDATION]
    assert {r["ran"] for r in sampled} == {"grid"} and len(sampled) == 3
    assert all("pass@2" in row for row in summary["points"])


def test_code_sandbox_scores_each_point(root):
    """code-offline: each point's generated programs run in rewind's sandbox, scored per point."""
    model, tokenizer = _load(root)
    rw = engine.attach(model, root / "lora")
    points = [engine.Point(rw.path_name, a) for a in (0.0, 0.5, 1.0)]
    evaluator = harness.Evaluator(model, tokenizer, harness.resolve_suites(["code-offline"]), limit=2, batch_size=2)
    g = grid.install(rw)
    scored = score(evaluator, evaluator.entries, GridLM(model, tokenizer, 2), g, points)
    g.remove()
    assert [len(per_point) for per_point in scored] == [3] * len(evaluator.entries)
    assert all(r.n == 2 and 0 <= r.value <= 1 for per_point in scored for r in per_point)


def test_out_of_memory_halves_the_items_per_pass(root, point_by_point, monkeypatch):
    """A grid pass that runs out of device memory (others share the GPU; free memory is an estimate) is run again
    with half the items per pass, down to one, and scores as before."""
    original, passes = HFLM._model_generate, []

    def generate_or_run_out(self, context, *args, **kwargs):
        passes.append(context.shape[0])
        if context.shape[0] > 3:  # more than one item's rows (3 points): "out of memory"
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, context, *args, **kwargs)

    monkeypatch.setattr(HFLM, "_model_generate", generate_or_run_out)
    out = root / "sweep-oom"
    sweep.Sweep(_spec(root, "lora", batch_points=3), out).run(progress=False)
    grid_values, point_values = _values(out), _values(point_by_point)
    assert grid_values.keys() == point_values.keys()
    assert all(math.isclose(grid_values[k], point_values[k], rel_tol=REL) for k in grid_values)
    assert passes[:3] == [6, 3, 3]  # 2 items x 3 points ran out; then one item a pass
    assert {r["ran"] for r in _lines(out) if r["split"] == results.VALIDATION} == {"grid"}


def test_an_error_that_is_not_memory_is_not_retried(root, monkeypatch):
    def broken(self, context, *args, **kwargs):
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(HFLM, "_model_generate", broken)
    with pytest.raises(torch.AcceleratorError, match="illegal memory access"):
        sweep.Sweep(_spec(root, "lora", batch_points=3), root / "sweep-broken").run(progress=False)
