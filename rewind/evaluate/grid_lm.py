"""lm-eval on a group of points: one batched pass of the resident base answers every request at every point of the
group (issue 16); each point is then scored by lm-eval's own task code, as if it had run alone.

`score(evaluator, entries, lm, grid, points)` runs each task's lm-eval `evaluate()` in three steps:
- collect: each task's `evaluate()` builds its requests and asks `lm`; the asked requests are kept and the call is
  abandoned (`_Asked`); the requests are built once (`built_once`), so every later call asks the same ones;
- answer: the requests of *all* the tasks, per request kind, in one call of HFLM's own code with every row at its
  point (rewind.grid): a pass decodes until its slowest row stops, so the tasks' generations in one pass wait once,
  not once per task (HFLM still batches by generation arguments, as it would alone);
- replay: each task's `evaluate()` again per point k, its requests answered with point k's responses (by task and
  request). A task that asks more than one kind collects and answers again until it has all its answers.
So requests, filters, metrics, pass@k and the code sandbox are lm-eval's and rewind's as in a point-by-point run.

How the rows are laid out, HFLM's own code doing the rest:
- generate_until: each request K times in a row. HFLM sorts stably by context, so every batch holds whole blocks of
  K copies in order (checked); `_model_generate` reorders them point-major for the branches and back. Decoding
  is HFLM's, on every row; its stop strings decide as lm-eval's do, with less host work per step (stops.py).
- loglikelihood (and loglikelihood_rolling, which HFLM builds on `_loglikelihood_tokens`): the requests are cut into
  HFLM's own batches (its sort, its one-token-continuation groups); a batch runs once with its rows repeated per
  point, then HFLM's `_loglikelihood_tokens` runs on it once per point, fed that point's logits, so continuation
  selection, the logits cache and the greedy check are HFLM's. A request's K answers travel as numpy vectors, which
  HFLM's rolling sum adds elementwise, then split per point.
Items per pass: the batch size per task answered, unless K times its rows would not fit in free memory
(`rows_that_fit`, from the pass's token lengths); then fewer, down to one item (K rows).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import normalize_gen_kwargs

from ..errors import RewindError
from . import harness, stops

# Share of the free memory a grid pass may plan for: the estimate below leaves out transient buffers.
MEMORY_SHARE = 0.5


class GridLM(HFLM):
    def __init__(self, model, tokenizer, batch_size: int):
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        self.items = int(batch_size)  # items per pass and task answered at most: the point-by-point batch size
        self._limit = self.items  # items per pass at most in the current answer: self.items per task in it
        self._grid, self._points, self._replaying = None, (), None
        self._task: str | None = None  # whose requests are asked now (collect, replay)
        self._asked: dict[str, list] = {}  # kind -> [(keys, requests)] collected, not answered yet
        self._kept: dict[tuple, list] = {}  # request key -> its responses, one per point
        self._cap: int | None = None  # items per pass at most, once a pass ran out of memory
        self._feed: int | None = None  # _model_call: 0 runs the grid pass, k > 0 returns point k's logits
        self._logits: tuple[torch.Tensor, torch.Tensor] | None = None  # (inputs, [K, rows, T, V]) of one batch

    @contextmanager
    def record(self, grid, points: Sequence):
        """Requests asked in here are collected (`asking`) and answered at every point of `points` on `grid`
        (`answer`); the answers are kept for `replay`."""
        self._grid, self._points, self._kept, self._asked = grid, tuple(points), {}, {}
        try:
            yield
        finally:
            self._grid, self._asked = None, {}

    @contextmanager
    def asking(self, task: str):
        """In here, `task`'s requests: answered with point 0's kept responses where all are kept, else kept for
        `answer` and the asking call abandoned (`_Asked`)."""
        self._task = task
        try:
            yield
        finally:
            self._task = None

    @contextmanager
    def replay(self, k: int, task: str):
        """Requests of `task` (as `score` names it: its position in the entries) in here return point k's
        responses kept by the last `record`."""
        self._replaying, self._task = k, task
        try:
            yield
        finally:
            self._replaying = self._task = None

    def answer(self) -> None:
        """Every request collected since the last answer, at every point: one call per request kind, all the tasks'
        requests of that kind together."""
        asked, self._asked = self._asked, {}
        for kind, calls in asked.items():
            keys = [key for call_keys, _ in calls for key in call_keys]
            requests = [request for _, call_requests in calls for request in call_requests]
            compute, pick = self._kinds[kind]
            self._limit = self.items * len({key[0] for key in keys})
            with harness.attention_backends():
                values = self._fitting(lambda: compute(requests))  # noqa: B023
            for key, value in zip(keys, values, strict=True):
                self._kept[key] = [pick(value, k) for k in range(len(self._points))]

    # -- requests -------------------------------------------------------------------------------------------
    @property
    def _kinds(self) -> dict[str, tuple[Callable[[list], list], Callable]]:
        """kind -> (HFLM's computation of a list of requests at every point, point k's response from its value)."""
        return {
            "generate_until": (self._generate_all, lambda v, k: v[k]),
            "loglikelihood": (
                lambda requests: HFLM.loglikelihood(self, requests, disable_tqdm=True),
                lambda v, k: (float(v[0][k]), bool(v[1][k])),
            ),
            "loglikelihood_rolling": (
                lambda requests: HFLM.loglikelihood_rolling(self, requests, disable_tqdm=True),
                lambda v, k: float(v[k]),
            ),
        }

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return self._respond("generate_until", requests)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._respond("loglikelihood", requests)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return self._respond("loglikelihood_rolling", requests)

    def _respond(self, kind: str, requests) -> list:
        if self._task is None:
            raise RewindError("grid: a request outside asking() or replay()")
        keys = _keys(self._task, kind, requests)
        if self._replaying is not None:
            return [self._take(key) for key in keys]
        if all(key in self._kept for key in keys):
            return [self._kept[key][0] for key in keys]
        self._asked.setdefault(kind, []).append((keys, list(requests)))
        raise _Asked

    def _fitting(self, compute: Callable[[], list]) -> list:
        """compute(), again with half the items per pass after the device ran out of memory: its free memory is
        an estimate, and other processes on the same GPU take from it after the plan was made."""
        while True:
            try:
                return compute()
            except (torch.cuda.OutOfMemoryError, torch.AcceleratorError) as exc:
                items = min(self._limit, self._cap or self._limit)
                if "out of memory" not in str(exc) or items == 1:
                    raise
                self._cap = items // 2
                self._feed = self._logits = None
                torch.cuda.empty_cache()

    def _take(self, key: tuple):
        if key not in self._kept:
            raise RewindError(
                f"grid: point {self._replaying} asked for a {key[1]} request the grid pass did not answer "
                f"({str(key[2])[:80]!r}); evaluate with --batch-points 1"
            )
        return self._kept[key][self._replaying]

    # -- generation -----------------------------------------------------------------------------------------
    def _generate_all(self, requests) -> list[list[str]]:
        K = len(self._points)
        copies = [_Args(r.args) for r in requests for _ in range(K)]
        tokens = max(len(self.tok_encode(r.args[0])) for r in requests) + max(self._new_tokens(r) for r in requests)
        with self._batch(self._items_per_pass(tokens, all_logits=False) * K):
            out = HFLM.generate_until(self, copies)  # its bar shows with rewind -v
        return [out[i * K : (i + 1) * K] for i in range(len(requests))]

    def _new_tokens(self, request) -> int:
        return normalize_gen_kwargs(dict(request.args[1]), self.max_gen_toks)["max_gen_toks"]

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        if self._grid is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        K, rows = len(self._points), context.shape[0]
        if rows % K or not torch.equal(context[::K].repeat_interleave(K, 0), context):
            raise RewindError("grid: a generation batch is not whole blocks of one request per point")
        order = torch.arange(rows, device=context.device).view(-1, K).t().flatten()  # point-major for the branches
        mask = generation_kwargs.get("attention_mask")
        if mask is not None:
            generation_kwargs["attention_mask"] = mask[order]
        with self._grid.at(self._points, rows=rows // K), stops.fast_stops():
            out = super()._model_generate(context[order], max_length, stop, **generation_kwargs)
        return out[torch.argsort(order)]

    # -- loglikelihood --------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self._grid is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        out: list = [None] * len(requests)
        for batch in self._batches(requests):
            chunk = [requests[i] for i in batch]
            answers = self._each_point(lambda: HFLM._loglikelihood_tokens(self, chunk, disable_tqdm=True))  # noqa: B023
            for j, i in enumerate(batch):
                out[i] = (np.array([a[j][0] for a in answers]), np.array([a[j][1] for a in answers]))
        return out

    def _batches(self, requests) -> list[list[int]]:
        """Request indices in HFLM's batches: its one-token-continuation groups, ordered by its sort key (that of a
        group's longest continuation), so many groups per batch as items fit."""
        groups: dict = {}
        cache = self.backend == "causal" and self.logits_cache
        for i, (_, context, continuation) in enumerate(requests):
            groups.setdefault(tuple(context + continuation[:-1]) if cache else i, []).append(i)

        def hflm_order(members):
            longest = max(members, key=lambda i: len(requests[i][2]))
            tokens = requests[longest][1] + requests[longest][2]
            return -len(tokens), tuple(tokens)

        ranked = sorted(groups.values(), key=hflm_order)
        tokens = max(len(c) + len(t) for _, c, t in requests)
        size = self._items_per_pass(min(tokens, self.max_length), all_logits=True)
        return [[i for group in ranked[s : s + size] for i in group] for s in range(0, len(ranked), size)]

    def _each_point(self, run: Callable[[], list]) -> list[list]:
        """`run` (HFLM on one batch) once per point: the first runs the grid pass, the others replay its logits."""
        try:
            with self._batch(self._limit):  # at least the groups of the batch: HFLM keeps it one batch
                answers = []
                for k in range(len(self._points)):
                    self._feed = k
                    answers.append(run())
                return answers
        finally:
            self._feed = self._logits = None

    def _model_call(self, inps, attn_mask=None, labels=None):
        if self._feed is None:
            return super()._model_call(inps, attn_mask, labels)
        if self._feed == 0:
            rows, K = inps.shape[0], len(self._points)
            with self._grid.at(self._points, rows=rows):
                logits = super()._model_call(inps.repeat(K, 1), attn_mask, labels)
            self._logits = inps, logits.view(K, rows, *logits.shape[1:])
        elif self._logits is None or not torch.equal(inps, self._logits[0]):
            raise RewindError("grid: HFLM batched a loglikelihood batch differently for another point")
        return self._logits[1][self._feed]

    # -- memory ---------------------------------------------------------------------------------------------
    def _items_per_pass(self, tokens: int, all_logits: bool) -> int:
        fit = rows_that_fit(self.model, tokens, all_logits)
        return max(1, min(self._limit, self._cap or self._limit, fit // len(self._points)))

    @contextmanager
    def _batch(self, size: int):
        saved, self.batch_size_per_gpu = self.batch_size_per_gpu, size
        try:
            yield
        finally:
            self.batch_size_per_gpu = saved


@dataclasses.dataclass(frozen=True)
class _Args:
    """A request as HFLM.generate_until reads it: its args only."""

    args: tuple


class _Asked(Exception):
    """Raised out of a task's evaluate() once its requests are collected: the answers come from `GridLM.answer`."""


def _keys(task: str, kind: str, requests) -> list[tuple]:
    """(task, kind, args, occurrence): identical requests (pass@k's repeats) are told apart by their order, and
    two tasks' identical requests by their task."""
    seen: Counter = Counter()
    keys = []
    for request in requests:
        args = _hashable(request.args)
        keys.append((task, kind, args, seen[args]))
        seen[args] += 1
    return keys


def _hashable(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def rows_that_fit(model, tokens: int, all_logits: bool) -> int:
    """Batch rows of `tokens` tokens that MEMORY_SHARE of the device's free memory holds: the KV cache and hidden
    states per token, and the logits (every position's for loglikelihood, in the model's dtype, HFLM's fp32
    log-softmax and the other points' kept; the last position's for generation)."""
    c = model.config
    size = next(model.parameters()).element_size()
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * heads * head_dim * size + 8 * c.hidden_size * size
    if all_logits:
        per_token += c.vocab_size * (2 * size + 4)
    per_row = tokens * per_token + 2 * 4 * c.vocab_size
    return int(MEMORY_SHARE * free_bytes(model.device) // per_row)


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def score(evaluator, entries: Sequence, lm: GridLM, grid, points: Sequence, on_task=None) -> list[list]:
    """Each of `entries`' (tasks of `evaluator`) TaskResult at each of `points` ([entry][point]): their requests
    answered together, one grid pass per request kind (module docstring). A task's seconds per point: its own
    evaluate() calls and its share of the passes that answered it, over the points. `on_task(name)` after each
    task's points are scored (a progress bar)."""
    K = len(points)
    seconds = [0.0] * len(entries)
    first: dict[int, object] = {}
    leaves = [leaf for entry in entries for leaf in entry.loaded["tasks"].values()]
    with built_once(leaves), lm.record(grid, points):
        waiting = list(range(len(entries)))  # by position: a task and its pass@k entry share a name
        while waiting:  # a task that asks several kinds of request waits for each in turn
            asked = []
            for i in waiting:
                start = time.perf_counter()
                try:
                    with lm.asking(str(i)):
                        first[i] = evaluator.score(entries[i], lm)
                except _Asked:
                    asked.append(i)
                seconds[i] += time.perf_counter() - start
            start = time.perf_counter()
            lm.answer()
            for i in asked:
                seconds[i] += (time.perf_counter() - start) / len(asked)
            waiting = asked
        out = []
        for i, entry in enumerate(entries):
            results = [first[i]]
            for k in range(1, K):
                with lm.replay(k, str(i)):
                    results.append(evaluator.score(entry, lm))
            share = (seconds[i] + sum(r.seconds for r in results[1:])) / K
            out.append([dataclasses.replace(r, seconds=share) for r in results])
            if on_task is not None:
                on_task(entry.name)
    return out


@contextmanager
def built_once(tasks: Iterable):
    """In here, each lm-eval task builds its requests (prompts through jinja and the chat template: ~2 ms each on
    a CPU) at its first `build_all_requests` only; a later call with the same arguments gets fresh copies of those
    requests, without responses. So every replayed point is asked exactly the requests the grid pass answered, and
    lm-eval scores it from those requests and their responses, as after a build of its own."""
    tasks = list(tasks)
    for task in tasks:
        task.build_all_requests = functools.partial(_build_once, task, task.build_all_requests, {})
    try:
        yield
    finally:
        for task in tasks:
            del task.build_all_requests  # the class's own again


def _build_once(task, build: Callable, built: dict, **kwargs) -> None:
    if built.get("kwargs") != kwargs:
        build(**kwargs)
        built.update(kwargs=kwargs, instances=task.instances)
    task._instances = [dataclasses.replace(i, resps=[], filtered_resps={}) for i in built["instances"]]
