"""The lm-eval bridge: evaluate a live, in-memory model (its weights changed in place between runs) on suites.

A suite is a named list of lm-eval tasks. These resolve by name:
- bundled offline suites (`math-offline`, `med-offline`, `code-offline`, `general-offline`): lm-eval tags over the
  YAMLs in rewind/evaluate/suites/tasks, with data shipped in the package; their tasks also resolve one by one;
- the paper's suites (`math`, `med`, `general`): lm-eval's own tasks, which fetch data from the HF hub;
- a task YAML file, or a task, group or tag in an include path (dirs searched before lm-eval's own tasks, as
  lm-eval's --include_path does);
- any other lm-eval task, group or tag name: a suite of that task (a tag: of its tasks).

Split policy (`split_items`), the same for every task: the validation phase scores the task's validation split and
the test phase its test split; a task naming only one of them (or the same split twice) has that split's items
shuffled with SPLIT_SEED and cut in two disjoint halves, the first for validation, the second for test. A limit
takes the first items of each. Every result records which items it scored.

The Evaluator loads tasks and wraps the model once, then each `run()` evaluates the weights as they are now.
Each task (or group) is its own `lm_eval.evaluator.evaluate` call, so its result equals what lm-eval's
`simple_evaluate(model=HFLM(model), tasks=[task], limit=...)` gives for the same weights and batch size (for a
halved task: `samples={task: indices}`, lm-eval's own way to score chosen items; tests/test_suites.py and
tests/test_task_splits.py check it; bench/README.md has the GPU comparison, where greedy generations can vary).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
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
SCORE_MAPS = {"bits_per_byte": lambda bpb: 100.0 * 2.0**-bpb}


# Seeds the shuffle before a single-split task is halved; fixed, so every run halves a task the same way.
SPLIT_SEED = 1234


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[str, ...]
    include_path: Path | None  # the bundled tasks dir; None for other tasks
    user_paths: tuple[str, ...] = ()  # include dirs (and task YAMLs' dirs), searched before lm-eval's own tasks


@dataclass(frozen=True)
class Items:
    """What one phase scores of one task: positions [start, stop) among the `size` items of lm-eval's split
    `split`, in their own order, or (`seed` set: a single-split task's half) in their shuffle by `seed`."""

    split: str
    size: int
    start: int
    stop: int
    seed: int | None = None

    def indices(self) -> list[int]:
        """The items' indices in the split, ascending (the order lm-eval scores them in)."""
        order = list(range(self.size))
        if self.seed is not None:
            random.Random(self.seed).shuffle(order)
        return sorted(order[self.start : self.stop])

    def record(self) -> dict:
        return {"split": self.split, "items": [self.start, self.stop], "of": self.size, "seed": self.seed}


@dataclass(frozen=True)
class TaskResult:
    suite: str
    task: str
    split: str  # the phase: "validation" (choose) or "test" (report); `scored` says which items that was
    metric: str  # lm-eval's "metric,filter" key of the primary metric
    value: float
    stderr: float | None
    score: float  # 0-100, higher is better
    seconds: float
    n: int
    metrics: dict[str, float] = field(default_factory=dict)  # every metric lm-eval reported, by its key
    chat_template: bool = False  # whether the prompts went through the tokenizer's chat template
    scored: dict[str, dict] = field(default_factory=dict)  # per lm-eval task: Items.record() of what was scored
    items: dict | None = None  # per-item values of `metric` (see `per_item`); kept out of results.jsonl


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
    EXPECTED = (
        "Custom kwargs can be passed to `--metadata`",
        "`pretrained` model kwarg is not of type `str`",
        "Passed an already-initialized model through `pretrained`",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.EXPECTED)


@functools.cache
def _quiet() -> None:
    for name in ("lm_eval.api.task", "lm_eval.models.huggingface"):
        logging.getLogger(name).addFilter(_DropExpectedNotices())


@functools.cache
def _bundled_manager():
    from lm_eval.tasks import TaskManager

    _quiet()
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@functools.cache
def _default_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()  # indexes every lm-eval task: seconds, so only when a name needs it


@functools.cache
def _user_manager(dirs: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    _quiet()
    # Without lm-eval's own tasks: indexing them takes seconds, and names not found here fall back to them.
    return TaskManager(include_path=list(dirs), include_defaults=False)


def _manager(suite: Suite, task: str):
    """The TaskManager that defines `task` of `suite`: bundled, the include dirs', else lm-eval's own."""
    if suite.include_path is not None:
        return _bundled_manager()
    if suite.user_paths and task in _user_manager(suite.user_paths).all_tasks:
        return _user_manager(suite.user_paths)
    return _default_manager()


def is_bundled(task: str) -> bool:
    """Whether `task` is one of rewind's bundled offline tasks (their splits are shipped, never halved)."""
    return task in _bundled_manager().all_subtasks


def load(suite: Suite, task: str) -> dict:
    """lm-eval's TaskManager.load() of one task (or group, or tag) of `suite`."""
    try:
        return _manager(suite, task).load([task])
    except FileNotFoundError as exc:
        if suite.include_path is not None:  # a bundled data file is gone: the install is damaged
            raise RewindError(
                f"task {task}: data file {exc.filename} is missing; reinstall rewind or run "
                f"python -m rewind.evaluate.suites.build"
            ) from exc
        raise _unloadable(task, exc) from exc
    except ConnectionError as exc:  # lm-eval's own tasks fetch their data from the hub (datasets raises this)
        raise RewindError(
            f"task {task}: its data is not in the local HF cache; "
            + (
                models.ONLINE_HINT
                if models.offline()
                else f"the hub is unreachable ({exc}); check the network "
                "or use a bundled suite (math-offline, general-offline, ...)"
            )
        ) from exc
    except Exception as exc:  # lm-eval fails in many ways on a bad YAML or absent data
        raise _unloadable(task, exc) from exc


def _unloadable(task: str, exc: Exception) -> RewindError:
    first = (str(exc).strip().splitlines() or [""])[0]
    return RewindError(f"task {task}: lm-eval cannot load it ({type(exc).__name__}: {first})")


def resolve_suites(names: list[str], include_path: Sequence[str | Path] = ()) -> list[Suite]:
    """Suites by name (see the module docstring); `include_path`: dirs of task YAMLs, as lm-eval's --include_path."""
    dirs = []
    for path in include_path:
        if not Path(path).is_dir():
            raise RewindError(f"--include-path {path}: not a directory")
        dirs.append(str(Path(path).resolve()))
    return [_resolve(name, tuple(dict.fromkeys(dirs))) for name in names]


def _resolve(name: str, dirs: tuple[str, ...]) -> Suite:
    if name in BUNDLED:
        return Suite(name, tuple(sorted(_bundled_manager().task_index[name].tags)), TASKS_DIR)
    if name.endswith((".yaml", ".yml")):
        return _yaml_suite(name, dirs)
    if name in PAPER_SUITES:
        return Suite(name, PAPER_SUITES[name], None, dirs)
    if name in _bundled_manager().all_subtasks:
        return Suite(name, (name,), TASKS_DIR)
    # lazily: lm-eval's own index takes seconds to build, and a name in the include dirs does not need it
    for make in ([lambda: _user_manager(dirs)] if dirs else []) + [_default_manager]:
        manager = make()
        if name in manager.all_tasks:
            entry = manager.task_index[name]
            tagged = entry.kind.name == "TAG"  # a suite of the tasks it names, as the bundled suites are
            return Suite(name, tuple(sorted(entry.tags)) if tagged else (name,), None, dirs)
    known = ", ".join([*BUNDLED, *PAPER_SUITES])
    raise RewindError(
        f"unknown suite {name!r}: use one of {known}, a bundled task, an lm-eval task name, a task "
        f"YAML file, or a task in a dir given with --include-path"
    )


def _yaml_suite(name: str, dirs: tuple[str, ...]) -> Suite:
    """A task (or group) YAML file: its dir joins the include dirs; the suite keeps the path as its name."""
    path = Path(name).resolve()
    if not path.is_file():
        raise RewindError(f"task file {name}: no such file")
    dirs = tuple(dict.fromkeys([*dirs, str(path.parent)]))
    found = [
        key
        for key, entry in _user_manager(dirs).task_index.items()
        if entry.yaml_path is not None and Path(entry.yaml_path).resolve() == path
    ]
    if not found:
        raise RewindError(
            f"task file {name}: lm-eval does not read it as a task or group (or a YAML of the same "
            f"task name in its dir or an include dir takes precedence)"
        )
    return Suite(name, (found[0],), None, dirs)


CHAT_TEMPLATE_MODES = ("auto", "on", "off")


def use_chat_template(mode: str, tokenizer) -> bool:
    """Whether tasks that ask for the chat template get it. auto: when the tokenizer has one (a plain pretrained
    base has none: its prompts stay plain text); on: it must have one; off: never."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise RewindError(f"--chat-template {mode}: use one of {', '.join(CHAT_TEMPLATE_MODES)}")
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        raise RewindError(
            "--chat-template on: the base's tokenizer has no chat template; pass --chat-template off "
            "(plain prompts) or use a base that has one"
        )
    return has if mode == "auto" else mode == "on"


def suite_scores(results: list[TaskResult]) -> dict[str, float]:
    """Each suite's score: the mean of its tasks' 0-100 scores."""
    return suite_means((result.suite, result.score) for result in results)


def suite_means(scores: Iterable[tuple[str, float]]) -> dict[str, float]:
    """{suite: the mean of its tasks' scores} from (suite, task score) pairs (TaskResults, or results.jsonl lines)."""
    by_suite: dict[str, list[float]] = {}
    for suite, score in scores:
        by_suite.setdefault(suite, []).append(score)
    return {suite: sum(values) / len(values) for suite, values in by_suite.items()}


def to_score(metric: str, value: float) -> float:
    """A primary metric's value on the 0-100 "higher is better" scale."""
    mapping = SCORE_MAPS.get(metric.split(",")[0])
    return mapping(value) if mapping else 100.0 * value


def split_items(leaf, phase: str, limit: int | None = None) -> Items:
    """The split policy (module docstring): the items of lm-eval task `leaf` that `phase` scores."""
    name = leaf.get_config("task")
    declared = list(dict.fromkeys(s for s in (leaf.get_config("validation_split"), leaf.get_config("test_split")) if s))
    if not declared:
        raise RewindError(f"task {name}: it names no validation_split or test_split to score")
    split = declared[1 if phase == "test" and len(declared) == 2 else 0]
    size = len(_docs(leaf, split))
    if len(declared) == 2:
        start, stop, seed = 0, size, None
    elif size < 2:
        raise RewindError(
            f"task {name}: its one split {split!r} has {size} item(s); validation and test each "
            f"take a disjoint half of it, so it needs at least 2"
        )
    else:
        start, stop, seed = (0, size // 2, SPLIT_SEED) if phase == "validation" else (size // 2, size, SPLIT_SEED)
    if stop == start:
        raise RewindError(f"task {name}: its {phase} split {split!r} has no items")
    return Items(split, size, start, stop if limit is None else min(stop, start + limit), seed)


def _docs(leaf, split: str):
    """A split's documents as lm-eval scores them (after the task's process_docs); lm-eval checked at loading that
    the data has the splits the task names."""
    docs = leaf.dataset[split]
    return leaf.config.process_docs(docs) if leaf.config.process_docs is not None else docs


def use_split(leaf, phase: str, limit: int | None = None) -> Items:
    """Point `leaf`'s evaluation documents (lm-eval's eval_docs) at `phase`'s split; return its items."""
    items = split_items(leaf, phase, limit)
    if items.seed is None:  # a task with both splits: lm-eval scores test_split where one is named
        leaf.set_config(key="test_split", value=items.split)
    return items


def phase_docs(leaf, phase: str, limit: int | None = None) -> list:
    """The documents of `leaf` that `phase` scores, in lm-eval's order."""
    items = use_split(leaf, phase, limit)
    docs = leaf.eval_docs
    return [docs[i] for i in items.indices()]


@dataclass
class _Entry:
    """One evaluate() call: a requested task or group, loaded once."""

    suite: str
    name: str
    loaded: dict  # TaskManager.load() output
    chat: bool  # the task asks for the chat template
    phase: str
    items: dict[str, Items]  # per lm-eval task (the group's leaves, or the task itself)
    primary: str | None = None  # the metric to report, where not the task's own (pass@k runs)

    def samples(self, chunk: slice | None = None) -> dict[str, list[int]] | None:
        """lm-eval's `samples` where a task is halved, or only `chunk` of its items' positions is scored; None
        where a limit alone says what is scored."""
        if chunk is None and all(items.seed is None for items in self.items.values()):
            return None
        return {name: items.indices()[chunk or slice(None)] for name, items in self.items.items()}

    def where(self) -> str:
        parts = [f"{name} items {i.start}-{i.stop} of split {i.split!r}" for name, i in self.items.items()]
        return f"{self.phase} ({'; '.join(parts[:3])}{'; ...' if len(parts) > 3 else ''})"


class Evaluator:
    """Evaluates the current weights of `model` on `suites`; build once, `run()` after every weight change.

    `split` is the phase: "validation" to choose, "test" to report; every task's items follow the split policy
    (module docstring) and each TaskResult records them. `metrics` choose a task's score: {task or suite: metric}
    (lm-eval's "metric" or "metric,filter"). `gen_kwargs` update every generation task's settings, as lm-eval's
    --gen_kwargs does (e.g. {"do_sample": True, "temperature": 0.7}).
    `pass_k` (e.g. [1, 8]) adds, for every generation task, a sampled run of max(k) responses per item (`sampling`
    settings) scored as unbiased pass@k; its results carry the suite name + ":pass@k".
    `chat_template` (auto, on, off): see `use_chat_template`; it applies to the tasks that ask for the template.
    """

    def __init__(
        self,
        model,
        tokenizer,
        suites: list[Suite],
        split: str = "validation",
        limit: int | None = None,
        batch_size: int | str | None = None,
        gen_kwargs: dict[str, Any] | None = None,
        pass_k: Sequence[int] = (),
        sampling: dict[str, Any] | None = None,
        chat_template: str = "auto",
        metrics: dict[str, str] | None = None,
    ):
        if split not in SPLITS:
            raise RewindError(f"split {split!r}: use one of {', '.join(SPLITS)}")
        if limit is not None and limit < 1:
            raise RewindError(f"--limit {limit}: give at least 1 item per task and split")
        self.chat = use_chat_template(chat_template, tokenizer)
        use_bundled_nltk_data()
        from lm_eval.models.huggingface import HFLM

        if batch_size is None:
            batch_size = "auto" if model.device.type == "cuda" else 8
        self.split, self.limit, self.metrics = split, limit, dict(metrics or {})
        # Never a use_cache path: lm-eval's response cache keys on the request, not the weights.
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        if batch_size == "auto":
            # HFLM probes again on every generation call (seconds each, at the model's full context); probe
            # once, at full context, and keep that size for every request type and run.
            self.lm.batch_size_per_gpu = self.lm._detect_batch_size()
        self.entries = [self._load(suite, task, split, gen_kwargs, limit) for suite in suites for task in suite.tasks]
        _check_metrics(self.metrics, suites, self.entries)
        if pass_k:
            ks = sorted({int(k) for k in pass_k})
            if ks[0] < 1:
                raise RewindError(f"--pass-k {','.join(map(str, pass_k))}: k must be at least 1")
            self.entries += [
                self._sampled(suite, task, split, ks, {**DEFAULT_SAMPLING, **(sampling or {})}, limit)
                for suite in suites
                for task in suite.tasks
                if _generates(self.entries, suite, task)
            ]

    @staticmethod
    def _load(suite: Suite, task: str, split: str, gen_kwargs: dict[str, Any] | None, limit: int | None) -> _Entry:
        from lm_eval.defaults import DEFAULT_OTHER_SEED

        loaded = load(suite, task)
        chat, items = False, {}
        for name, leaf in loaded["tasks"].items():
            # What simple_evaluate does to each task before it evaluates.
            if gen_kwargs and leaf.get_config("output_type") == "generate_until":
                leaf.set_config(key="generation_kwargs", value=dict(gen_kwargs), update=True)
            if leaf.get_config("num_fewshot") is None:
                leaf.set_config(key="num_fewshot", value=0)
            leaf.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
            items[name] = use_split(leaf, split, limit)
            chat = chat or bool((leaf.get_config("metadata") or {}).get("chat_template"))
        return _Entry(suite.name, task, loaded, chat, split, items)

    @classmethod
    def _sampled(
        cls, suite: Suite, task: str, split: str, ks: list[int], sampling: dict[str, Any], limit: int | None
    ) -> _Entry:
        """`task` answered max(ks) times per item with sampling; each response scored by an untouched copy."""
        from lm_eval.api.metrics import mean
        from lm_eval.filters import build_filter_ensemble

        n = ks[-1]
        entry = cls._load(suite, task, split, sampling, limit)
        scorers = cls._load(suite, task, split, None, limit).loaded["tasks"]
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
        return _Entry(
            suite.name + PASS_SUFFIX, task, entry.loaded, entry.chat, split, entry.items, f"pass@{n},{PASS_FILTER}"
        )

    @property
    def task_names(self) -> list[str]:
        """The tasks (or groups) that `run()` reports, in order."""
        return [entry.name for entry in self.entries]

    def split_plan(self) -> dict[str, dict]:
        """{lm-eval task: Items.record()} of what this phase scores of every task."""
        return {name: items.record() for entry in self.entries for name, items in entry.items.items()}

    def run(self, on_task: Callable[[str], None] | None = None) -> list[TaskResult]:
        """Evaluate the model's current weights on every task; `on_task(name)` after each (a progress bar)."""
        out = []
        for entry in self.entries:
            out.append(self.score(entry))
            if on_task is not None:
                on_task(entry.name)
        return out

    def run_chunk(self, task: str, chunk: slice) -> TaskResult:
        """`task` scored on positions [chunk.start, chunk.stop) of this phase's items (Items.indices() order) only:
        a race gives each point a task's items a chunk at a time."""
        entry = next((e for e in self.entries if e.name == task and e.primary is None), None)
        if entry is None:
            raise RewindError(f"task {task}: not a task of this evaluation ({', '.join(self.task_names)})")
        return self.score(entry, chunk=chunk)

    def score(self, entry: _Entry, lm=None, chunk: slice | None = None) -> TaskResult:
        """One task (an entry of `entries`) on the model as it is, through `lm` (default: this evaluator's HFLM);
        `chunk`: only those positions of its items (`run_chunk`)."""
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
        sandboxed = is_bundled(entry.name)
        samples = entry.samples(chunk)
        start = time.perf_counter()
        chat = entry.chat and self.chat
        with attention_backends():
            out = evaluate(
                lm=lm or self.lm,
                task_dict=entry.loaded,
                limit=None if samples else self.limit,
                samples=samples,
                log_samples=True,  # the per-item values paired statistics need (rewind/items.py)
                apply_chat_template=chat,
                confirm_run_unsafe_code=sandboxed,
            )
        seconds = time.perf_counter() - start
        result = _result(entry, out, seconds, chat, self.metrics)
        return dataclasses.replace(result, items=per_item(out, entry.loaded["tasks"], result.metric))


def attention_backends():
    """A context for evaluating: torch's attention on any backend but cuDNN's. cuDNN plans each new shape, and each
    decoding step's cache length is one until a batch of that shape has decoded once: a grid pass and a sweep's
    first point meet only new shapes. On the H200 (bench/decode_warmup.py, SmolLM2's shape) a step of a process's
    first batch cost 112 ms with cuDNN against 34 without, a 1920-row pass's 79 against 39; warm, 24 against 26."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    others = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.OVERRIDEABLE]
    return sdpa_kernel(others)


def _check_metrics(metrics: dict[str, str], suites: list[Suite], entries: list[_Entry]) -> None:
    """Refuse a --metric that names no task or suite of the run, or a metric a task does not have, before any
    evaluation."""
    names = {s.name for s in suites} | {e.name for e in entries}
    for key, metric in metrics.items():
        if key not in names:
            raise RewindError(
                f"--metric {key}={metric}: {key} is no task or suite of this run ({', '.join(sorted(names))})"
            )
    for entry in entries:
        chosen = metrics.get(entry.name) or metrics.get(entry.suite)
        leaf = entry.loaded["tasks"].get(entry.name)
        if chosen is None or leaf is None:  # a group's metrics are known once it has run
            continue
        higher = leaf.higher_is_better()
        name = chosen.split(",")[0]
        if name not in higher:
            raise RewindError(f"--metric {entry.name}={chosen}: task {entry.name} has metrics {', '.join(higher)}")
        _check_direction(entry.name, chosen, name, higher[name])


def _check_direction(task: str, chosen: str, name: str, higher: bool | None) -> None:
    if higher is False and name not in SCORE_MAPS:
        raise RewindError(
            f"--metric {task}={chosen}: lower is better for {name}, and scores are higher-is-better "
            f"(0-100); choose a higher-is-better metric"
        )


def _result(entry: _Entry, out: dict, seconds: float, chat: bool, chosen: dict[str, str]) -> TaskResult:
    values = out["results"][entry.name]
    # Only numbers: results.jsonl stays strict JSON (a NaN secondary metric is left out, not written as NaN).
    metrics = {
        k: float(v)
        for k, v in values.items()
        if "," in k and "_stderr," not in k and isinstance(v, (int, float)) and math.isfinite(v)
    }
    metric = _primary_metric(entry, out, chosen)
    value = values.get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RewindError(
            f"task {entry.name}, {entry.where()}: lm-eval gave {metric} = {value!r}, not a number, so it has no score"
        )
    stderr = values.get(metric.replace(",", "_stderr,", 1))
    n = sum(out["n-samples"][leaf]["effective"] for leaf in entry.loaded["tasks"])
    return TaskResult(
        entry.suite,
        entry.name,
        entry.phase,
        metric,
        float(value),
        float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None,
        to_score(metric, value),
        seconds,
        n,
        metrics,
        chat,
        {name: items.record() for name, items in entry.items.items()},
    )


def per_item(out: dict, leaves: dict, metric: str) -> dict | None:
    """Each item's value of `metric` (lm-eval's "metric,filter") in the output of lm-eval's evaluate(...,
    log_samples=True), over the lm-eval tasks `leaves` ({name: Task}: a task, or a group's leaves).

    {"doc": doc ids (a group's as "leaf/id"), "values": a_i, "weights": b_i, "aggregation": lm-eval's aggregation
    of the metric, by name}. Where the metric's per-item value is a pair (loglikelihood, bytes) as for
    bits_per_byte, a_i and b_i are its parts and lm-eval aggregates a ratio of sums; otherwise b_i = 1.
    rewind/items.py turns these into per-item scores. None where lm-eval logged no item of the metric.
    """
    name, _, filter_ = metric.partition(",")
    doc, values, weights, aggregations = [], [], [], set()
    for leaf, task in leaves.items():
        aggregations.add(getattr(task.aggregation().get(name), "__name__", None))
        for sample in (out.get("samples") or {}).get(leaf, []):
            if sample.get("filter") != (filter_ or "none") or name not in sample:
                continue
            value = sample[name]
            pair = isinstance(value, (list, tuple)) and len(value) == 2
            try:  # a metric whose items are not numbers (bleu's (reference, prediction) pairs) has no per-item score
                a, b = (float(value[0]), float(value[1])) if pair else (float(value), 1.0)
            except (TypeError, ValueError):
                return None
            doc.append(sample["doc_id"] if len(leaves) == 1 else f"{leaf}/{sample['doc_id']}")
            values.append(a)
            weights.append(b)
    if not doc or len(aggregations) != 1:
        return None
    return {"doc": doc, "values": values, "weights": weights, "aggregation": aggregations.pop()}


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


def _primary_metric(entry: _Entry, out: dict, chosen: dict[str, str]) -> str:
    """The metric that scores `entry`: pass@k's, else --metric's, the task's declared one, rewind's choice
    (PRIMARY_METRICS), else the task's first higher-is-better metric."""
    if entry.primary:
        return entry.primary
    keys = [k for k in out["results"][entry.name] if "," in k and "_stderr," not in k]
    wanted = chosen.get(entry.name) or chosen.get(entry.suite)
    if wanted:
        found = [k for k in keys if k == wanted or k.split(",")[0] == wanted]
        if len(found) != 1:
            more = "; name its filter too (metric,filter)" if found else ""
            raise RewindError(f"--metric {entry.name}={wanted}: task {entry.name} reports {', '.join(keys)}{more}")
        name = found[0].split(",")[0]
        _check_direction(entry.name, wanted, name, out.get("higher_is_better", {}).get(entry.name, {}).get(name))
        return found[0]
    if entry.name in entry.loaded["tasks"]:
        declared = (entry.loaded["tasks"][entry.name].get_config("metadata") or {}).get("primary_metric")
        if declared:
            return declared
    if entry.name in PRIMARY_METRICS:
        return PRIMARY_METRICS[entry.name]
    higher = out.get("higher_is_better", {}).get(entry.name, {})
    for key in keys:
        metric = key.split(",")[0]
        if higher.get(metric) or metric in SCORE_MAPS:
            return key
    raise RewindError(
        f"task {entry.name}: no higher-is-better metric among {list(out['results'][entry.name])}; "
        f"choose one with --metric {entry.name}=METRIC"
    )
