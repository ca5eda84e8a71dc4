"""The sweep on a tiny model: scores equal lm-eval's on peft's merge; resume; new run ids; export from the sweep."""

from __future__ import annotations

import copy
import json

import pytest
import tinysweep
import torch
from peft import LoraConfig, get_peft_model
from tiny import randomize
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewind import export, results, sweep
from rewind.cli import main
from rewind.report import table

TARGET, GENERAL = ["math_offline_basic_arithmetic"], ["general_offline_truthfulqa_mc1", "general_offline_wiki_ppl"]
LIMIT = 3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny Llama with SmolLM2's tokenizer (so chat templates work) and a random LoRA adapter."""
    root = tmp_path_factory.mktemp("sweep")
    base = tinysweep.chat_base(root / "base")
    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    randomize(peft_model, 0.2)
    peft_model.save_pretrained(root / "lora")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(root / "merged")
    tokenizer.save_pretrained(root / "merged")
    return root


def _spec(workdir, **kw):
    fields = dict(
        adapter=str(workdir / "lora"),
        base=str(workdir / "base"),
        alphas=[0, 0.5, 1],
        target=TARGET,
        general=GENERAL,
        limit=LIMIT,
        dtype="fp32",
        device="cpu",
    )
    return sweep.SweepSpec(**{**fields, **kw})


@pytest.fixture(scope="module")
def swept(workdir):
    out = workdir / "sweep"
    summary = sweep.Sweep(_spec(workdir), out).run(progress=False)
    return out, summary


def test_sweep_writes_results_summary_plot(swept):
    out, summary = swept
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    validation = [r for r in records if r["split"] == "validation"]
    assert {r["point"] for r in validation} == {"base@0", "final@1", "linear@0.5"}
    assert len(validation) == 3 * 3  # points x tasks
    assert {r["point"] for r in records if r["split"] == "test"} == {"base@0", "final@1", summary["selected"]["key"]}
    assert (out / "pareto.png").stat().st_size > 10_000
    assert summary["base_point"]["test"] is not None
    # On intervals, the final is kept unless a point is confidently better, even one a little ahead on the scores;
    # a point chosen here is on the frontier.
    kept = summary["verdict"].startswith("final@1 kept")
    assert summary["selected"]["key"] in summary["frontier"] or kept
    text = table(summary)
    assert "linear" in text and "selected (max-target-within, validation)" in text


def test_final_point_equals_lm_eval_on_peft_merge(swept, workdir):
    """The sweep's alpha=1 numbers are what lm-eval itself reports on peft's merged model (same tasks, limit)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from rewind.evaluate.harness import _bundled_manager

    out, _ = swept
    mine = {
        r["task"]: r
        for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())
        if r["point"] == "final@1" and r["split"] == "test"
    }
    merged = AutoModelForCausalLM.from_pretrained(workdir / "merged", dtype=torch.float32).eval()
    lm = HFLM(pretrained=merged, tokenizer=AutoTokenizer.from_pretrained(workdir / "merged"), batch_size=8)
    for task in TARGET + GENERAL:
        chat = task.startswith("math")
        result = simple_evaluate(
            model=lm, tasks=[task], task_manager=_bundled_manager(), limit=LIMIT, apply_chat_template=chat
        )["results"][task]
        assert result[mine[task]["metric"]] == pytest.approx(mine[task]["value"], rel=1e-6), task


def test_rerun_resumes_and_kill_loses_only_the_point_in_flight(swept, workdir):
    out, _ = swept
    results = out / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    sweep.Sweep(_spec(workdir), out).run(progress=False)
    assert results.read_text().splitlines(keepends=True) == lines  # nothing recomputed

    # A kill while linear@0.5 was being written: its lines gone but for a torn fragment.
    kept = [line for line in lines if '"point": "linear@0.5"' not in line]
    results.write_text("".join(kept) + '{"run": "torn')
    sweep.Sweep(_spec(workdir), out).run(progress=False)
    after = [json.loads(line) for line in results.read_text().splitlines()]  # every line parses
    assert len(after) == len(lines)
    redone = after[len(kept) :]  # its validation lines, and its test lines if it was the selected point
    assert {r["point"] for r in redone} == {"linear@0.5"} and len(redone) == len(lines) - len(kept)


def test_changed_configuration_gets_a_new_run(swept, workdir):
    out, summary = swept
    other = _spec(workdir, limit=2)
    assert other.run_id("x") != _spec(workdir).run_id("x")
    assert _spec(workdir, alphas=[0, 0.25, 1]).run_id("x") == _spec(workdir).run_id("x")  # more points: same run


def test_export_from_the_sweep_dir(swept, workdir, tmp_path, monkeypatch, capsys):
    out, summary = swept
    monkeypatch.chdir(workdir)  # `rewind export` with no flags reads ./rewind-sweep
    (workdir / "rewind-sweep").symlink_to(out)
    with pytest.raises(SystemExit) as code:
        main(["export", "--out", str(tmp_path / "best"), "--dry-run"])
    assert code.value.code == 0
    chosen = summary["selected"]
    alpha = {"base": 0.0, "final": 1.0}.get(chosen["path"], chosen["alpha"])
    assert f"linear(alpha={alpha:g})" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export", "--alpha", "0.5", "--out", str(tmp_path / "half")])
    written = (tmp_path / "half" / "README.md").read_text()
    assert "| alpha | 0.5 |" in written and "| path | linear |" in written
    plan = export.plan(
        export.ExportSpec(adapter=workdir / "lora", base=workdir / "base", out=tmp_path / "x", alpha=0.5)
    )
    assert plan.update.sha256 in written


def test_training_checkpoints_become_the_train_path(swept, workdir, tmp_path):
    """A checkpoint whose B is half the final one sits exactly at linear@0.5: the train path must score it so."""
    import shutil

    from safetensors.torch import load_file, save_file

    for step, factor in [(10, 0.5), (20, 1.0)]:
        ckpt = tmp_path / "run" / f"checkpoint-{step}"
        shutil.copytree(workdir / "lora", ckpt)
        tensors = load_file(ckpt / "adapter_model.safetensors")
        save_file(
            {k: v * factor if "lora_B" in k else v for k, v in tensors.items()}, ckpt / "adapter_model.safetensors"
        )
    out = tmp_path / "sweep"
    summary = sweep.Sweep(_spec(workdir, checkpoints=str(tmp_path / "run" / "checkpoint-*")), out).run(progress=False)
    rows = {r["key"]: r for r in summary["points"]}
    assert {"train@10", "train@20"} <= set(rows)
    for train, twin in [("train@10", "linear@0.5"), ("train@20", "final@1")]:
        assert rows[train]["target"] == pytest.approx(rows[twin]["target"], abs=1e-9)
        assert rows[train]["general"] == pytest.approx(rows[twin]["general"], abs=1e-4)


def test_pass_at_k_formula_against_enumeration():
    from itertools import combinations

    from rewind.evaluate.harness import pass_at_k

    for n, c, k in [(4, 1, 1), (4, 1, 2), (5, 2, 3), (6, 0, 2), (3, 3, 1), (8, 2, 8)]:
        right = [1] * c + [0] * (n - c)
        draws = list(combinations(range(n), k))
        expected = sum(any(right[i] for i in d) for d in draws) / len(draws)
        assert pass_at_k(n, c, k) == pytest.approx(expected), (n, c, k)


def test_sweep_reports_pass_at_k_beside_greedy(swept, workdir, tmp_path, monkeypatch):
    from rewind.evaluate import harness

    seen = []
    original = harness.pass_at_k
    monkeypatch.setattr(harness, "pass_at_k", lambda n, c, k: seen.append((n, c, k)) or original(n, c, k))
    out = tmp_path / "sweep"
    summary = sweep.Sweep(_spec(workdir, alphas=[0, 1], pass_k=[1, 3]), out).run(progress=False)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    sampled = [r for r in records if r["role"] == "pass@k"]
    assert {r["task"] for r in sampled} == set(TARGET)  # generation tasks only
    assert {n for n, _, _ in seen} == {3} and all(0 <= c <= 3 for _, c, _ in seen)
    # every item of every sampled run was scored for each k: limit items x 2 ks per run
    assert len(seen) == len(sampled) * LIMIT * 2
    greedy = {(r["point"], r["split"], r["task"]): r["value"] for r in records if r["role"] != "pass@k"}
    first = {
        (r["point"], r["split"], r["task"]): r["value"]
        for r in map(json.loads, (swept[0] / "results.jsonl").read_text().splitlines())
    }
    assert all(first[key] == value for key, value in greedy.items() if key in first)  # pass@k leaves greedy alone
    for row in summary["points"]:
        assert 0 <= row["pass@1"] <= row["pass@3"] <= 100
    assert "pass@3" in table(summary)


def test_ranks_own_their_points_whenever_they_read_the_log():
    points = [results.Point.at("linear", a / 10) for a in range(1, 8)]
    finished_by_rank_1 = {(points[1].key, "validation")}  # rank 1 was quicker: rank 0 reads the log after it
    mine = {0: results.shard(points, finished_by_rank_1, 0, 2), 1: results.shard(points, set(), 1, 2)}
    evaluated = [p.key for rank in (0, 1) for p in mine[rank]]
    assert sorted(evaluated) == sorted(p.key for p in points)  # each point exactly once, none skipped


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                torch.cuda.device_count() < 2, reason="needs two GPUs: each rank keeps its model on its own"
            ),
        ),
    ],
)
def test_two_ranks_share_the_points(tmp_path, device):
    """Under torchrun each rank evaluates its share of the points once; rank 0 selects and reports."""
    import subprocess
    import sys
    from collections import Counter

    base, adapter = tinysweep.make(tmp_path)
    out = tmp_path / "sweep"
    argv = tinysweep.sweep_args(base, adapter, out, "--alphas", "0,0.25,0.5,0.75,1")
    argv[argv.index("--device") + 1] = device
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "rewind.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    counts = Counter((r["point"], r["split"], r["task"]) for r in records)
    assert set(counts.values()) == {1}  # no point evaluated twice
    points = {p for p, split, _ in counts if split == "validation"}
    assert points == {"base@0", "final@1", "linear@0.25", "linear@0.5", "linear@0.75"}
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["points"]) == 5 and summary["selected"]["test"] is not None
    assert done.stdout.count("selected (max-target-within") == 1  # only rank 0 reports
    devices = {r["device"] for r in records if r["split"] == "validation"}
    assert devices == ({"cpu"} if device == "cpu" else {"cuda:0", "cuda:1"})  # each rank on its own device
