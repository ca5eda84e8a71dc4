"""The lm-eval bridge: evaluate a live, in-memory model (its weights changed in place between runs) on suites.

A suite is a named list of lm-eval tasks. Three kinds resolve by name:
- bundled offline suites (`math-offline`, `med-offline`, `code-offline`, `general-offline`): lm-eval tags over the
  YAMLs in rewind/evaluate/suites/tasks, with data shipped in the package; their tasks also resolve one by one;
- the paper's suites (`math`, `med`, `general`): lm-eval's own tasks, which fetch data from the HF hub;
- any other lm-eval task or group name: a suite of that one task.

The Evaluator loads tasks and wraps the model once, then each `run()` evaluates the weights as they are now.
Each task (or group) is its own `lm_eval.evaluator.evaluate` call, so its result equals what lm-eval's
`simple_evaluate(model=HFLM(model), tasks=[task], limit=...)` gives for the same weights and batch size
(tests/test_suites.py checks it; bench/README.md has the GPU comparison, where greedy generations can vary).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import models
from ..errors import RewindError
from .suites import NLTK_DIR, SPLITS, TASKS_DIR

BUNDLED = ("math-offline", "med-offline", "code-offline", "general-offline")
PAPER_SUITES = {
    "math": ("minerva_math500", "aime24"),  # lm-eval 0.4.13 has no AMC23 task
    "med": ("medmcqa", "medqa_4options", "pubmedqa", "mmlu_pro_health"),
    "general": ("ifeval", "nq_open", "bbh"),
}
# Where a task's first higher-is-better metric is not the one to report.
PRIMARY_METRICS = {"minerva_math500": "math_verify,none"}
# Sampling for pass@k (generation tasks only); greedy accuracy is always reported beside it.
DEFAULT_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.95}
PASS_SUFFIX, PASS_FILTER = ":pass@k", "pass_at_k"
# Primary metrics that are not already a 0-1 "higher is better" value, mapped to 0-100.
SCORE_MAPS = {"bits_per_byte": lambda bpb: 100.0 * 2.0 ** -bpb}


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[str, ...]
    include_path: Path | None  # the bundled tasks dir; None for lm-eval's own tasks


@dataclass(frozen=True)
class TaskResult:
    suite: str
    task: str
    split: str
    metric: str  # lm-eval's "metric,filter" key of the primary metric
    value: float
    stderr: float | None
    score: float  # 0-100, higher is better
    seconds: float
    n: int
    metrics: dict[str, float] = field(default_factory=dict)  # every metric lm-eval reported, by its key
    chat_template: bool = False  # whether the prompts went through the tokenizer's chat template


def use_bundled_nltk_data() -> None:
    """Let nltk find the bundled punkt_tab, so lm-eval's IFEval scorer does not try to download it.

    Must run before `lm_eval.tasks.ifeval.instructions_util` is imported: it looks for punkt_tab on import.
    nltk reads NLTK_DATA once, when it is imported, so an nltk already imported gets the path directly.
    """
    path = str(NLTK_DIR)
    paths = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    if path not in paths:
        os.environ["NLTK_DATA"] = os.pathsep.join([path, *paths])
    nltk = sys.modules.get("nltk")
    if nltk is not None and path not in nltk.data.path:
        nltk.data.path.insert(0, path)


class _DropExpectedNotices(logging.Filter):
    # lm-eval warns on every load of a `custom_dataset` task (all bundled tasks) about a CLI option, and on every
    # HFLM built around a live model (what rewind always does) that it was not given a name.
    EXPECTED = ("Custom kwargs can be passed to `--metadata`", "`pretrained` model kwarg is not of type `str`",
                "Passed an already-initialized model through `pretrained`")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.EXPECTED)


@functools.cache
def _bundled_manager():
    from lm_eval.tasks import TaskManager

    for name in ("lm_eval.api.task", "lm_eval.models.huggingface"):
        logging.getLogger(name).addFilter(_DropExpectedNotices())
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@functools.cache
def _default_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()  # indexes every lm-eval task: seconds, so only when a name needs it


def resolve_suites(names: list[str]) -> list[Suite]:
    """Suites by name: bundled, the paper's, a bundled task, or any lm-eval task/group name."""
    suites = []
    for name in names:
        if name in BUNDLED:
            tasks = tuple(sorted(_bundled_manager().task_index[name].tags))
            suites.append(Suite(name, tasks, TASKS_DIR))
        elif name in PAPER_SUITES:
            suites.append(Suite(name, PAPER_SUITES[name], None))
        elif name in _bundled_manager().all_subtasks:
            suites.append(Suite(name, (name,), TASKS_DIR))
        elif name in _default_manager().all_tasks:
            suites.append(Suite(name, (name,), None))
        else:
            known = ", ".join([*BUNDLED, *PAPER_SUITES])
            raise RewindError(f"unknown suite {name!r}: use one of {known}, a bundled task or an lm-eval task name")
    return suites


CHAT_TEMPLATE_MODES = ("auto", "on", "off")


def use_chat_template(mode: str, tokenizer) -> bool:
    """Whether tasks that ask for the chat template get it. auto: when the tokenizer has one (a plain pretrained
    base has none: its prompts stay plain text); on: it must have one; off: never."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise RewindError(f"--chat-template {mode}: use one of {', '.join(CHAT_TEMPLATE_MODES)}")
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        raise RewindError("--chat-template on: the base's tokenizer has no chat template; pass --chat-template off "
                          "(plain prompts) or use a base that has one")
    return has if mode == "auto" else mode == "on"


def suite_scores(results: list[TaskResult]) -> dict[str, float]:
    """Each suite's score: the mean of its tasks' 0-100 scores."""
    by_suite: dict[str, list[float]] = {}
    for result in results:
        by_suite.setdefault(result.suite, []).append(result.score)
    return {suite: sum(scores) / len(scores) for suite, scores in by_suite.items()}


def to_score(metric: str, value: float) -> float:
    """A primary metric's value on the 0-100 "higher is better" scale."""
    mapping = SCORE_MAPS.get(metric.split(",")[0])
    return mapping(value) if mapping else 100.0 * value


@dataclass
class _Entry:
    """One evaluate() call: a requested task or group, loaded once."""
    suite: str
    name: str
    loaded: dict  # TaskManager.load() output
    chat: bool  # the task asks for the chat template
    split: str
    primary: str | None = None  # the metric to report, where not the task's own (pass@k runs)


class Evaluator:
    """Evaluates the current weights of `model` on `suites`; build once, `run()` after every weight change.

    `split` picks the bundled tasks' split ("validation" to choose, "test" to report); lm-eval's own tasks
    always use their fixed evaluation split, which each TaskResult records. `gen_kwargs` update every
    generation task's settings, as lm-eval's --gen_kwargs does (e.g. {"do_sample": True, "temperature": 0.7}).
    `pass_k` (e.g. [1, 8]) adds, for every generation task, a sampled run of max(k) responses per item (`sampling`
    settings) scored as unbiased pass@k; its results carry the suite name + ":pass@k".
    `chat_template` (auto, on, off): see `use_chat_template`; it applies to the tasks that ask for the template.
    """

    def __init__(self, model, tokenizer, suites: list[Suite], split: str = "validation", limit: int | None = None,
                 batch_size: int | str | None = None, gen_kwargs: dict[str, Any] | None = None,
                 pass_k: Sequence[int] = (), sampling: dict[str, Any] | None = None, chat_template: str = "auto"):
        if split not in SPLITS:
            raise RewindError(f"split {split!r}: use one of {', '.join(SPLITS)}")
        self.chat = use_chat_template(chat_template, tokenizer)
        use_bundled_nltk_data()
        from lm_eval.models.huggingface import HFLM

        if batch_size is None:
            batch_size = "auto" if model.device.type == "cuda" else 8
        self.split, self.limit = split, limit
        # Never a use_cache path: lm-eval's response cache keys on the request, not the weights.
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        if batch_size == "auto":
            # HFLM probes again on every generation call (seconds each, at the model's full context); probe
            # once, at full context, and keep that size for every request type and run.
            self.lm.batch_size_per_gpu = self.lm._detect_batch_size()
        self.entries = [self._load(suite, task, split, gen_kwargs) for suite in suites for task in suite.tasks]
        if pass_k:
            ks = sorted({int(k) for k in pass_k})
            if ks[0] < 1:
                raise RewindError(f"--pass-k {','.join(map(str, pass_k))}: k must be at least 1")
            self.entries += [self._sampled(suite, task, split, ks, {**DEFAULT_SAMPLING, **(sampling or {})})
                             for suite in suites for task in suite.tasks if _generates(self.entries, suite, task)]

    @staticmethod
    def _load(suite: Suite, task: str, split: str, gen_kwargs: dict[str, Any] | None) -> _Entry:
        from lm_eval.defaults import DEFAULT_OTHER_SEED

        manager = _bundled_manager() if suite.include_path is not None else _default_manager()
        try:
            loaded = manager.load([task])
        except FileNotFoundError as exc:  # a bundled data file is gone: the install is damaged
            raise RewindError(f"task {task}: data file {exc.filename} is missing; reinstall rewind or run "
                              f"python -m rewind.evaluate.suites.build") from exc
        except ConnectionError as exc:  # lm-eval's own tasks fetch their data from the hub (datasets raises this)
            raise RewindError(f"task {task}: its data is not in the local HF cache; " + (
                models.ONLINE_HINT if models.offline() else f"the hub is unreachable ({exc}); check the network "
                "or use a bundled suite (math-offline, general-offline, ...)")) from exc
        chat = False
        for leaf in loaded["tasks"].values():
            # What simple_evaluate does to each task before it evaluates.
            if gen_kwargs and leaf.get_config("output_type") == "generate_until":
                leaf.set_config(key="generation_kwargs", value=dict(gen_kwargs), update=True)
            if leaf.get_config("num_fewshot") is None:
                leaf.set_config(key="num_fewshot", value=0)
            leaf.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
            if suite.include_path is not None:
                leaf.set_config(key="test_split", value=split)
            chat = chat or bool((leaf.get_config("metadata") or {}).get("chat_template"))
        first = next(iter(loaded["tasks"].values()))
        used = first.get_config("test_split") if first.has_test_docs() else first.get_config("validation_split")
        return _Entry(suite.name, task, loaded, chat, used)

    @classmethod
    def _sampled(cls, suite: Suite, task: str, split: str, ks: list[int], sampling: dict[str, Any]) -> _Entry:
        """`task` answered max(ks) times per item with sampling; each response scored by an untouched copy."""
        from lm_eval.api.metrics import mean
        from lm_eval.filters import build_filter_ensemble

        n = ks[-1]
        entry = cls._load(suite, task, split, sampling)
        scorers = cls._load(suite, task, split, None).loaded["tasks"]
        names = [f"pass@{k}" for k in ks]
        for name, leaf in entry.loaded["tasks"].items():
            metric = _declared_metric(scorers[name]) or "exact_match"

            def score(doc, results, scorer=scorers[name], metric=metric):
                correct = sum(scorer.process_results(doc, [r])[metric] >= 1 for r in results[0])
                return {f"pass@{k}": pass_at_k(n, correct, k) for k in ks}

            leaf.set_config(key="repeats", value=n)
            leaf.set_config(key="process_results", value=score)
            leaf._filters = [build_filter_ensemble(PASS_FILTER, [["take_first_k", {"k": n}]])]  # keep all n
            leaf._metric_fn_list = dict.fromkeys(names)
            leaf._aggregation_list = dict.fromkeys(names, mean)
            leaf._higher_is_better = dict.fromkeys(names, True)
        return _Entry(suite.name + PASS_SUFFIX, task, entry.loaded, entry.chat, entry.split, f"pass@{n},{PASS_FILTER}")

    @property
    def task_names(self) -> list[str]:
        """The tasks (or groups) that `run()` reports, in order."""
        return [entry.name for entry in self.entries]

    def run(self) -> list[TaskResult]:
        """Evaluate the model's current weights on every task."""
        return [self._run(entry) for entry in self.entries]

    def _run(self, entry: _Entry) -> TaskResult:
        import numpy as np
        from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
        from lm_eval.evaluator import evaluate
        from lm_eval.utils import set_torch_seed

        # simple_evaluate's seeding, so sampled generations repeat and match it.
        random.seed(DEFAULT_RANDOM_SEED)
        np.random.seed(DEFAULT_OTHER_SEED)
        set_torch_seed(DEFAULT_OTHER_SEED)
        # Bundled tasks that run generated code (unsafe_code: true) run it in rewind's sandbox (sandbox.py);
        # lm-eval's own such tasks stay refused, as lm-eval refuses them.
        sandboxed = entry.name in _bundled_manager().all_subtasks
        start = time.perf_counter()
        chat = entry.chat and self.chat
        out = evaluate(lm=self.lm, task_dict=entry.loaded, limit=self.limit, log_samples=False,
                       apply_chat_template=chat, confirm_run_unsafe_code=sandboxed)
        seconds = time.perf_counter() - start
        return _result(entry, out, seconds, chat)


def _result(entry: _Entry, out: dict, seconds: float, chat: bool) -> TaskResult:
    values = out["results"][entry.name]
    metrics = {k: float(v) for k, v in values.items()
               if "," in k and "_stderr," not in k and isinstance(v, (int, float))}
    metric = _primary_metric(entry, out)
    stderr = values.get(metric.replace(",", "_stderr,", 1))
    value = float(values[metric])
    n = sum(out["n-samples"][leaf]["effective"] for leaf in entry.loaded["tasks"])
    return TaskResult(entry.suite, entry.name, entry.split, metric, value,
                      float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None,
                      to_score(metric, value), seconds, n, metrics, chat)


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples with `correct` right: 1 - C(n - c, k) / C(n, k) (Chen et al., 2021)."""
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def _declared_metric(leaf) -> str | None:
    declared = (leaf.get_config("metadata") or {}).get("primary_metric")
    return declared.split(",")[0] if declared else None


def _generates(entries: list[_Entry], suite: Suite, task: str) -> bool:
    entry = next(e for e in entries if e.suite == suite.name and e.name == task)
    return all(leaf.get_config("output_type") == "generate_until" for leaf in entry.loaded["tasks"].values())


def _primary_metric(entry: _Entry, out: dict) -> str:
    if entry.primary:
        return entry.primary
    if entry.name in entry.loaded["tasks"]:
        declared = (entry.loaded["tasks"][entry.name].get_config("metadata") or {}).get("primary_metric")
        if declared:
            return declared
    if entry.name in PRIMARY_METRICS:
        return PRIMARY_METRICS[entry.name]
    higher = out.get("higher_is_better", {}).get(entry.name, {})
    for key in out["results"][entry.name]:
        metric = key.split(",")[0]
        if "," in key and "_stderr" not in key and (higher.get(metric) or metric in SCORE_MAPS):
            return key
    raise RewindError(f"task {entry.name}: no higher-is-better metric among {list(out['results'][entry.name])}")
