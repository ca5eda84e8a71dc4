"""Bundled offline suites and the lm-eval bridge, on a tiny random Llama with SmolLM2's tokenizer."""

from __future__ import annotations

import gzip
import json
import math
import os
import sys

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rewind import RewindError, models
from rewind.evaluate import harness
from rewind.evaluate.suites import DATA_DIR, EVAL_SEED, MATH_GENERATORS, SPLITS, TASKS_DIR, TRAIN_SEED_LIMIT

sys.path.insert(0, str(TASKS_DIR))
import suite_utils  # lm-eval loads it by path; the tests import it the same way

# One task of each request type: multiple choice, chat generation, plain generation, rolling loglikelihood.
EXACTNESS_TASKS = ["med_offline_medmcqa", "math_offline_chain_sum", "general_offline_squad", "general_offline_wiki_ppl"]


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than 2 on a busy 2-core machine, and these models are tiny
    tokenizer = AutoTokenizer.from_pretrained(models.embedded_dir())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    yield LlamaForCausalLM(config).eval(), tokenizer
    torch.set_num_threads(threads)


def load_split(task: str, split: str):
    """The task as the Evaluator loads it, with its docs for `split`."""
    loaded = harness._bundled_manager().load([task])["tasks"][task]
    loaded.set_config(key="test_split", value=split)
    return loaded


def read_data(name: str, split: str) -> list[dict]:
    with gzip.open(DATA_DIR / f"{name}.{split}.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def test_bundled_suites_load_both_splits_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    suites = harness.resolve_suites(list(harness.BUNDLED))
    assert [s.name for s in suites] == list(harness.BUNDLED)
    for suite in suites:
        assert suite.tasks and suite.include_path == TASKS_DIR
        for task in suite.tasks:
            data = load_split(task, "test").get_config("dataset_kwargs")["data"]
            for split in SPLITS:
                docs = list(load_split(task, split).eval_docs)
                assert len(docs) == len(read_data(data, split)) > 0, (task, split)


def test_validation_and_test_items_are_disjoint():
    tasks = harness._bundled_manager().all_subtasks
    assert len(tasks) == 13
    for task in tasks:
        keys = {}
        for split in SPLITS:
            t = load_split(task, split)
            # A document's identity: its prompt, or for perplexity (empty prompt) its text.
            keys[split] = {t.doc_to_text(d) or t.doc_to_target(d) for d in t.eval_docs}
        assert keys["validation"] and not keys["validation"] & keys["test"], task
    squad = {d["context"] for s in SPLITS for d in read_data("general_squad", s)}
    assert not squad & {d["text"] for s in SPLITS for d in read_data("general_wiki_ppl", s)}


def test_math_prompts_are_not_training_prompts():
    import reasoning_gym as rg

    for name, config in MATH_GENERATORS.items():
        items = [item for split in SPLITS for item in read_data(f"math_{name}", split)]
        # Every item seed a training set below TRAIN_SEED_LIMIT can use, with the same generator config.
        train = {x["question"] for x in rg.create_dataset(name, size=TRAIN_SEED_LIMIT, seed=0, **config)}
        assert not {item["question"] for item in items} & train, name
        for item in items[:20]:  # provenance: the stored seed regenerates the item
            assert item["seed"] >= EVAL_SEED
            assert rg.create_dataset(name, size=1, seed=item["seed"], **config)[0]["question"] == item["question"]


def test_evaluator_runs_every_bundled_suite(tiny):
    model, tokenizer = tiny
    evaluator = harness.Evaluator(model, tokenizer, harness.resolve_suites(list(harness.BUNDLED)), limit=2)
    results = evaluator.run()
    assert [r.task for r in results] == evaluator.task_names
    assert {r.suite for r in results} == set(harness.BUNDLED)
    for r in results:
        assert r.split == "validation" and r.n == 2
        assert math.isfinite(r.value) and 0.0 <= r.score <= 100.0 and r.seconds > 0, r
        assert r.metrics[r.metric] == r.value
    scores = harness.suite_scores(results)
    assert set(scores) == set(harness.BUNDLED) and all(math.isfinite(v) for v in scores.values())


def test_evaluator_equals_lm_eval_simple_evaluate(tiny):
    """The sweep relies on this: a run is exactly lm-eval's own result for the same weights, tasks and limit."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = tiny
    suites = harness.resolve_suites(EXACTNESS_TASKS)
    ours = harness.Evaluator(model, tokenizer, suites, split="test", limit=3).run()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    for result in ours:
        chat = result.task.startswith("math_")
        theirs = simple_evaluate(
            model=lm, tasks=[result.task], task_manager=manager, limit=3, apply_chat_template=chat
        )["results"][result.task]
        assert result.metrics == {k: v for k, v in theirs.items() if k in result.metrics}, result.task
        assert len(result.metrics) == sum("," in k and "_stderr," not in k for k in theirs)
    # The validation split too, given to lm-eval as a prepared task.
    [ours] = harness.Evaluator(model, tokenizer, harness.resolve_suites(["med_offline_medmcqa"]), limit=3).run()
    theirs = simple_evaluate(
        model=lm, tasks=[load_split("med_offline_medmcqa", "validation")], task_manager=manager, limit=3
    )
    assert ours.value == theirs["results"]["med_offline_medmcqa"]["acc,none"]


def test_weights_changed_in_place_are_seen_and_restoring_restores(tiny):
    model, tokenizer = tiny
    evaluator = harness.Evaluator(model, tokenizer, harness.resolve_suites(["general_offline_wiki_ppl"]), limit=3)
    [before] = evaluator.run()
    weight = model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    [changed] = evaluator.run()
    with torch.no_grad():
        weight.copy_(saved)
    [restored] = evaluator.run()
    assert changed.value != before.value
    assert restored.metrics == before.metrics


def test_gen_kwargs_update_generation_tasks_only(tiny):
    model, tokenizer = tiny
    suites = harness.resolve_suites(["math_offline_champ", "med_offline_medmcqa"])
    evaluator = harness.Evaluator(model, tokenizer, suites, gen_kwargs={"do_sample": True, "temperature": 0.7})
    champ, med = (next(iter(e.loaded["tasks"].values())) for e in evaluator.entries)
    settings = champ.get_config("generation_kwargs")
    assert settings["do_sample"] is True and settings["temperature"] == 0.7 and settings["max_gen_toks"] == 256
    assert med.get_config("output_type") == "multiple_choice"
    assert [e.chat for e in evaluator.entries] == [True, False]


def test_unknown_suite_is_a_one_line_error():
    with pytest.raises(RewindError) as info:
        harness.resolve_suites(["math-offline", "no-such-suite"])
    message = str(info.value)
    assert "\n" not in message and "no-such-suite" in message
    assert all(name in message for name in [*harness.BUNDLED, *harness.PAPER_SUITES])


def test_paper_suites_and_lm_eval_tasks_resolve_by_name():
    suites = harness.resolve_suites(["math", "med", "general", "hellaswag"])
    assert [s.tasks for s in suites] == [*harness.PAPER_SUITES.values(), ("hellaswag",)]
    assert all(s.include_path is None for s in suites)
    known = set(harness._default_manager().all_tasks)
    assert {t for s in suites for t in s.tasks} <= known


def test_ifeval_scorer_runs_offline(monkeypatch):
    import nltk

    def no_download(*args, **kwargs):
        raise AssertionError("nltk tried to download")

    monkeypatch.setattr(nltk, "download", no_download)
    harness.use_bundled_nltk_data()
    assert nltk.data.find("tokenizers/punkt_tab").path.startswith(str(harness.NLTK_DIR))
    from lm_eval.tasks.ifeval import utils

    doc = {
        "key": 1,
        "prompt": "Describe a cat in at most two sentences, without commas.",
        "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_sentences"],
        "kwargs": [{}, {"relation": "less than", "num_sentences": 3}],
    }
    good = utils.process_results(doc, ["Cats are small furry animals. They purr when happy."])
    assert good["prompt_level_strict_acc"] and good["inst_level_strict_acc"] == [True, True]
    bad = utils.process_results(doc, ["Cats purr. Cats nap. Cats hunt, and cats play."])
    assert bad["inst_level_strict_acc"] == [False, False]


def test_scores_are_0_to_100_higher_is_better():
    assert harness.to_score("acc,none", 0.25) == 25.0
    assert harness.to_score("bits_per_byte,none", 1.0) == 50.0
    assert harness.to_score("bits_per_byte,none", 0.0) == 100.0


@pytest.mark.parametrize(
    "text, gold, ok",
    [
        ("Thinking... <answer>42</answer>", "42", True),
        ("So 12 + 30 = 42.", "42", True),
        ("The total is 1,234.", "1234", True),
        ("\\boxed{7} and later 9", "7", True),
        ("<answer>-5.0</answer>", "-5", True),
        ("It is 41.", "42", False),
        ("no number here", "42", False),
    ],
)
def test_math_answer_matching(text, gold, ok):
    assert suite_utils.math_exact_match({"answer": gold}, [text])["exact_match"] == float(ok)


def test_squad_metrics():
    doc = {"answers": ["Denver Broncos", "the Broncos"]}
    assert suite_utils.squad_metrics(doc, [" The Broncos."]) == {"exact_match": 1.0, "f1": 1.0}
    assert suite_utils.squad_metrics(doc, ["Broncos won"])["f1"] == pytest.approx(2 / 3)
