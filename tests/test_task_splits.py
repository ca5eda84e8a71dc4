"""Issue 14: one's own task YAMLs (--include-path, a YAML path), the split policy for every split layout, no NaN, a
rerun that adds nothing, --metric; and the paper's suites resolved over local stand-ins of their split layouts.

Offline throughout: every task reads local JSON lines. Layouts: validation+test, test only, validation only, train
only (ifeval's). Multiple-choice tasks show the user's case; rolling-loglikelihood tasks give continuous scores, so
scoring other items than the recorded ones could not go unnoticed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tinysweep
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewind import RewindError, report
from rewind.cli import main
from rewind.evaluate import harness

WORDS = (
    "red",
    "green",
    "blue",
    "cat",
    "dog",
    "bird",
    "river",
    "stone",
    "cloud",
    "seven",
    "apple",
    "paper",
    "glass",
    "north",
    "quiet",
    "sudden",
    "old",
    "warm",
    "bright",
    "tall",
)
# task -> (output type, {split: items}, the splits its YAML names)
LAYOUTS = {
    "my_valtest": ("mc", {"validation": 10, "test": 10}, {"validation_split": "validation", "test_split": "test"}),
    "my_testonly": ("mc", {"test": 13}, {"test_split": "test"}),
    "my_valonly": ("rolling", {"validation": 13}, {"validation_split": "validation"}),
    "my_trainonly": ("rolling", {"train": 13}, {"test_split": "train"}),
}
LIMIT = 4
MC = """output_type: multiple_choice
doc_to_text: "Q: {{question}}\\nA:"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
"""
ROLLING = """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}
  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}
  - {metric: byte_perplexity, aggregation: weighted_perplexity, higher_is_better: false}
"""


def _items(name: str, split: str, n: int, kind: str) -> list[dict]:
    rng = random.Random(f"{name}/{split}")
    out = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        if kind == "mc":
            out.append(
                {
                    "id": f"{split}-{i}",
                    "question": words,
                    "choices": [rng.choice(WORDS) for _ in range(4)],
                    "label": rng.randrange(4),
                }
            )
        else:
            out.append({"id": f"{split}-{i}", "text": words.capitalize() + "."})
    return out


def write_task(
    root: Path,
    name: str,
    kind: str,
    sizes: dict[str, int],
    fields: dict[str, str],
    yaml_dir: Path | None = None,
    task: str | None = None,
) -> Path:
    """A task YAML over local JSON lines (one file per split of the layout) in `yaml_dir` (default `root`)."""
    files = {}
    for split, n in sizes.items():
        files[split] = root / "data" / f"{name}.{split}.jsonl"
        files[split].parent.mkdir(parents=True, exist_ok=True)
        files[split].write_text("".join(json.dumps(item) + "\n" for item in _items(name, split, n, kind)))
    lines = [
        f"task: {task or name}",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        f"  cache_dir: {root / 'hf-datasets'}",
        "  data_files:",
        *[f"    {split}: {path}" for split, path in files.items()],
        *[f"{k}: {v}" for k, v in fields.items()],
    ]
    path = (yaml_dir or root) / f"{task or name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + (MC if kind == "mc" else ROLLING) + "metadata: {version: 1.0}\n")
    return path


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    """An include dir with the four layouts' tasks; my_trainonly lives elsewhere (it is passed as a YAML path)."""
    root = tmp_path_factory.mktemp("tasks")
    for name, (kind, sizes, fields) in LAYOUTS.items():
        write_task(root, name, kind, sizes, fields, root / ("own" if name == "my_trainonly" else "include"))
    return root


def shuffled_half(record: dict) -> list[int]:
    """The items a result line names, from its record alone: positions [a, b) of the split in its seeded shuffle
    (or in its own order where no seed)."""
    order = list(range(record["of"]))
    if record["seed"] is not None:
        random.Random(record["seed"]).shuffle(order)
    return sorted(order[record["items"][0] : record["items"][1]])


def _leaf(tasks: Path, name: str):
    include = [tasks / "include"] if name != "my_trainonly" else []
    spec = name if name != "my_trainonly" else str(tasks / "own" / "my_trainonly.yaml")
    [suite] = harness.resolve_suites([spec], include)
    return harness.load(suite, suite.tasks[0])["tasks"][name]


def test_split_policy_for_every_layout(tasks):
    expect = {
        "my_valtest": ("validation", "test", None),
        "my_testonly": ("test", "test", harness.SPLIT_SEED),
        "my_valonly": ("validation", "validation", harness.SPLIT_SEED),
        "my_trainonly": ("train", "train", harness.SPLIT_SEED),
    }
    for name, (val_split, test_split, seed) in expect.items():
        ids = {}
        for phase, split in (("validation", val_split), ("test", test_split)):
            items = harness.split_items(_leaf(tasks, name), phase)
            assert (items.split, items.seed) == (split, seed), name
            ids[phase] = [doc["id"] for doc in harness.phase_docs(_leaf(tasks, name), phase)]
            assert all(i.startswith(split) for i in ids[phase])
            limited = harness.phase_docs(_leaf(tasks, name), phase, LIMIT)
            assert len(limited) == LIMIT and {d["id"] for d in limited} <= set(ids[phase])  # --limit within each
        assert ids["validation"] and ids["test"] and not set(ids["validation"]) & set(ids["test"]), name
        if seed is not None:  # one split: the halves cover it, and the halving does not move between runs
            size = LAYOUTS[name][1][split]
            assert sorted(ids["validation"] + ids["test"], key=lambda i: int(i.split("-")[1])) == [
                f"{split}-{i}" for i in range(size)
            ]
            assert len(ids["validation"]) == size // 2
            assert ids["validation"] != [f"{split}-{i}" for i in range(size // 2)]  # shuffled, not the first half
            assert [d["id"] for d in harness.phase_docs(_leaf(tasks, name), "validation")] == ids["validation"]


def test_a_name_in_the_include_dirs_does_not_index_lm_evals_own_tasks(tasks):
    harness._default_manager.cache_clear()  # that index takes seconds; only a name found nowhere else needs it
    [suite] = harness.resolve_suites(["my_valtest"], [tasks / "include"])
    assert suite.tasks == ("my_valtest",) and harness._default_manager.cache_info().currsize == 0


def test_a_task_without_two_splits_to_score_is_a_sentence(tmp_path):
    write_task(tmp_path, "one_item", "mc", {"train": 1}, {"test_split": "train"})
    write_task(tmp_path, "no_split", "mc", {"train": 4}, {"training_split": "train"})
    write_task(tmp_path, "wrong_split", "mc", {"test": 4}, {"validation_split": "dev", "test_split": "test"})
    for name, words in [
        ("one_item", ("task one_item", "'train' has 1 item", "at least 2")),
        ("no_split", ("task no_split", "lm-eval cannot load it", "valid or test docs")),
        ("wrong_split", ("task wrong_split", "lm-eval cannot load it", "'dev'")),
    ]:
        [suite] = harness.resolve_suites([name], [tmp_path])
        with pytest.raises(RewindError) as info:
            harness.split_items(harness.load(suite, name)["tasks"][name], "validation")
        assert all(w in str(info.value) for w in words) and "\n" not in str(info.value), info.value


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return tinysweep.make(tmp_path_factory.mktemp("model"))


def _argv(tasks: Path, model_dirs, out: Path, *extra: str) -> list[str]:
    base, lora = model_dirs
    return [
        "sweep",
        "--base",
        str(base),
        "--adapter",
        str(lora),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--limit",
        str(LIMIT),
        "--alphas",
        "0,0.5,1",
        "--include-path",
        str(tasks / "include"),
        "--target",
        "my_valtest",
        "--target",
        "my_testonly",
        "--general",
        "my_valonly",
        "--general",
        str(tasks / "own" / "my_trainonly.yaml"),
        "--metric",
        "my_valtest=acc_norm",
        *extra,
    ]


def _run(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def swept(tasks, model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(tasks, model_dirs, out))
    assert exit_info.value.code == 0
    return out


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_own_tasks_sweep_records_what_it_scored(swept, tasks):
    records = _records(swept)
    plan = json.loads((swept / "sweep.json").read_text())["splits"]
    assert set(plan) == set(LAYOUTS)
    for r in records:
        [(leaf, scored)] = r["scored"].items()
        assert scored == plan[leaf][r["split"]] and r["n"] == LIMIT
        assert scored["items"][1] - scored["items"][0] == LIMIT  # --limit within the phase's items
    assert plan["my_valtest"] == {
        "validation": {"split": "validation", "items": [0, LIMIT], "of": 10, "seed": None},
        "test": {"split": "test", "items": [0, LIMIT], "of": 10, "seed": None},
    }
    for name, split in [("my_testonly", "test"), ("my_valonly", "validation"), ("my_trainonly", "train")]:
        val, test = plan[name]["validation"], plan[name]["test"]
        assert val == {"split": split, "items": [0, LIMIT], "of": 13, "seed": harness.SPLIT_SEED}
        assert test == {"split": split, "items": [6, 6 + LIMIT], "of": 13, "seed": harness.SPLIT_SEED}
        assert not set(shuffled_half(val)) & set(shuffled_half(test))
    assert {r["metric"] for r in records if r["task"] == "my_valtest"} == {"acc_norm,none"}
    assert {r["metric"] for r in records if r["task"] == "my_valonly"} == {"bits_per_byte,none"}


def test_summary_is_strict_json_and_selection_is_on_validation_scores(swept):
    summary = strict_json((swept / "summary.json").read_text())
    assert summary["metrics"]["target"] == {"my_valtest": "acc_norm,none", "my_testonly": "acc,none"}
    for row in summary["points"]:
        assert 0 <= row["target"] <= 100 and 0 < row["general"] <= 100
    for row in (summary["base_point"], summary["final_point"], summary["selected"]):
        assert row["test"] is not None and 0 < row["test"]["general"] <= 100
    assert "my_valtest acc_norm,none" in report.table(summary).splitlines()[0]


def test_rerun_adds_no_line(swept, tasks, model_dirs, capsys):
    before = (swept / "results.jsonl").read_text()
    code, out, _ = _run(_argv(tasks, model_dirs, swept), capsys)
    assert code == 0 and (swept / "results.jsonl").read_text() == before
    assert out.splitlines()[0].startswith("target   my_valtest acc_norm,none, my_testonly acc,none")


def test_scores_equal_simple_evaluate_on_the_same_items(swept, tasks, model_dirs, tmp_path):
    """Each result line is lm-eval's own score on the split and items the line names (peft's merge at alpha 1)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from peft import PeftModel

    base_dir, lora = model_dirs
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, lora).merge_and_unload().eval()
    lm = HFLM(pretrained=merged, tokenizer=AutoTokenizer.from_pretrained(base_dir), batch_size=8)
    # my_valtest's validation split as plain lm-eval scores it: a copy of the task naming only that split.
    kind, sizes, _ = LAYOUTS["my_valtest"]
    write_task(tmp_path, "my_valtest", kind, sizes, {"validation_split": "validation"}, task="ref_valtest")
    manager = TaskManager(
        include_path=[str(tasks / "include"), str(tasks / "own"), str(tmp_path)], include_defaults=False
    )
    checked = 0
    for r in _records(swept):
        if r["point"] != "final@1":
            continue
        [(leaf, scored)] = r["scored"].items()
        if scored["seed"] is None:
            task = "ref_valtest" if r["split"] == "validation" else leaf
            theirs = simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=LIMIT)["results"][task]
        else:
            theirs = simple_evaluate(
                model=lm, tasks=[leaf], task_manager=manager, samples={leaf: shuffled_half(scored)}
            )["results"][leaf]
        assert r["metrics"] == pytest.approx({k: theirs[k] for k in r["metrics"]}, rel=1e-5), (leaf, r["split"])
        checked += 1
    assert checked == 2 * len(LAYOUTS)


def test_bad_task_options_are_one_line_and_write_nothing(tasks, model_dirs, tmp_path, capsys):
    cases = [
        (["--include-path", str(tmp_path / "nope")], ("--include-path", "not a directory")),
        (["--metric", "my_valtest"], ("--metric my_valtest", "TASK=METRIC")),
        (["--metric", "no_task=acc"], ("--metric no_task=acc", "no task or suite")),
        (["--metric", "my_testonly=f1"], ("--metric my_testonly=f1", "acc, acc_norm")),
        (["--metric", "my_valonly=word_perplexity"], ("lower is better",)),
        (["--general", str(tmp_path / "missing.yaml")], ("missing.yaml", "no such file")),
    ]
    for extra, words in cases:
        out = tmp_path / "out"
        code, _, err = _run(_argv(tasks, model_dirs, out, *extra), capsys)
        assert code == 2 and not out.exists(), extra
        progress = ("%|", "examples/s]")  # model loading and datasets' split generation
        lines = [
            line
            for line in err.replace("\r", "\n").splitlines()
            if line.strip() and not any(p in line for p in progress)
        ]
        assert len(lines) == 1 and lines[0].startswith("rewind: error: ") and all(w in err for w in words), err


def test_a_missing_score_is_an_error_never_nan(tmp_path, model_dirs):
    """A metric lm-eval reports as NaN (here: every item's value) stops the run with which task, split, why."""
    write_task(
        tmp_path,
        "nan_task",
        "mc",
        {"validation": 4, "test": 4},
        {"validation_split": "validation", "test_split": "test", "process_results": "!function nan_utils.nan_results"},
    )
    (tmp_path / "nan_utils.py").write_text("def nan_results(doc, results):\n    return {'acc': float('nan')}\n")
    text = (
        (tmp_path / "nan_task.yaml")
        .read_text()
        .replace("  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n", "")
    )
    (tmp_path / "nan_task.yaml").write_text(text)
    model = AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.float32)
    evaluator = harness.Evaluator(
        model, AutoTokenizer.from_pretrained(model_dirs[0]), harness.resolve_suites(["nan_task"], [tmp_path]), limit=2
    )
    with pytest.raises(RewindError) as info:
        evaluator.run()
    message = str(info.value)
    assert "task nan_task" in message and "validation" in message and "'validation'" in message
    assert "not a number" in message and "\n" not in message
    with pytest.raises(RewindError, match="suite g has no score"):
        report.scores([{"point": "p@1", "split": "validation", "suite": "t", "score": 1.0}], ["t"], ["g"])


# -- the paper's suites over local stand-ins ---------------------------------------------------------------------

SPLIT_FIELDS = ("training_split", "validation_split", "test_split", "fewshot_split")
# What the policy must pick for the paper's tasks: (validation phase, test phase), "half" for a seeded half.
PAPER_POLICY = {
    "minerva_math500": ("test half", "test half"),
    "aime24": ("train half", "train half"),
    "medmcqa": ("validation half", "validation half"),  # lm-eval names validation twice (test is unlabelled)
    "medqa_4options": ("validation", "test"),
    "pubmedqa": ("validation", "test"),
    "mmlu_pro_health": ("test half", "test half"),
    "ifeval": ("train half", "train half"),
    "nq_open": ("validation half", "validation half"),
}
BBH_LEAVES = 2  # stand-in bbh: a group of its first two tasks


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """Stand-in tasks named like the paper's, each with the split fields of lm-eval's own YAML (read from lm-eval's
    task index, not assumed) over local data with those splits."""
    root = tmp_path_factory.mktemp("paper")
    index = harness._default_manager().task_index
    bbh = index["bbh"].cfg["task"][:BBH_LEAVES]
    layouts = {}
    for name in [*PAPER_POLICY, *bbh]:
        fields = {k: index[name].cfg[k] for k in SPLIT_FIELDS if index[name].cfg.get(k)}
        layouts[name] = fields
        write_task(root, name, "mc", dict.fromkeys(fields.values(), 8), fields, root / "tasks")
    (root / "tasks" / "bbh.yaml").write_text(
        "group: bbh\ntask:\n"
        + "".join(f"  - {t}\n" for t in bbh)
        + "aggregate_metric_list:\n  - {metric: acc, aggregation: mean, weight_by_size: true}\n"
        + "metadata: {version: 1.0}\n"
    )
    return root / "tasks", layouts


def test_paper_suites_resolve_to_standins_and_split_as_declared(standins):
    tasks_dir, layouts = standins
    assert layouts["ifeval"] == {"test_split": "train"} and layouts["nq_open"]["validation_split"] == "validation"
    suites = harness.resolve_suites(["math", "med", "general"], [tasks_dir])
    assert [s.tasks for s in suites] == list(harness.PAPER_SUITES.values())
    policy = dict(PAPER_POLICY, **{leaf: ("test half", "test half") for leaf in layouts if leaf.startswith("bbh")})
    for suite in suites:
        for task in suite.tasks:
            assert harness._manager(suite, task) is harness._user_manager(suite.user_paths)  # the stand-in
            for name, leaf in harness.load(suite, task)["tasks"].items():
                picked = tuple(
                    f"{i.split} half" if i.seed is not None else i.split
                    for i in (harness.split_items(leaf, phase) for phase in ("validation", "test"))
                )
                assert picked == policy[name], name


def test_paper_suites_sweep_selects_on_a_real_validation_split(standins, model_dirs, tmp_path, capsys):
    tasks_dir, _ = standins
    base, lora = model_dirs
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--base",
        str(base),
        "--adapter",
        str(lora),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--limit",
        "2",
        "--alphas",
        "0,0.5,1",
        "--include-path",
        str(tasks_dir),
        "--target",
        "med",
        "--target",
        "math",
        "--general",
        "general",
        "--metric",
        "minerva_math500=acc",
    ]
    code, text, err = _run(argv, capsys)
    assert code == 0, err
    records = _records(out)
    validation = {r["task"]: r for r in records if r["point"] == "base@0" and r["split"] == "validation"}
    assert validation["medqa_4options"]["scored"]["medqa_4options"]["split"] == "validation"
    assert validation["ifeval"]["scored"]["ifeval"]["split"] == "train"
    assert all(s["split"] == "test" and s["seed"] == harness.SPLIT_SEED for s in validation["bbh"]["scored"].values())
    test = {r["task"]: r for r in records if r["point"] == "base@0" and r["split"] == "test"}
    assert test["medqa_4options"]["scored"]["medqa_4options"]["split"] == "test"
    summary = strict_json((out / "summary.json").read_text())
    assert {r["key"] for r in summary["points"]} == {"base@0", "linear@0.5", "final@1"}
    assert summary["selected"]["test"] is not None
    assert "minerva_math500 acc,none" in text and "nan" not in text.lower()
    _run(argv, capsys)
    assert _records(out) == records  # a rerun adds no line


def test_diagnostics_probe_own_tasks_by_the_split_policy(tasks, model_dirs, tmp_path, capsys):
    from rewind.diagnostics.data import texts

    include = [str(tasks / "include")]
    validation, test = (texts("my_valonly", phase, include_path=include) for phase in ("validation", "test"))
    assert len(validation) == 6 and len(test) == 7 and not set(validation) & set(test)
    assert texts("my_valonly", "validation", 2, include_path=include) == validation[:2]
    base, lora = model_dirs
    code, _, err = _run(
        [
            "diagnose",
            "csd",
            "--base",
            str(base),
            "--adapter",
            str(lora),
            "--data",
            "target",
            "--target",
            "my_valonly",
            "--include-path",
            include[0],
            "--limit",
            "3",
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "csd"),
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "csd" / "csd.json").read_text())
    assert report["data"]["target"]["items"] == 3
