"""Bench-local: where a sweep's seconds go. `install(path)` times, until the process ends, every HFLM generate
and forward call (rows, tokens, seconds after a device sync), every task scored (pass or replay) and the session's
phases (open, validation, repeat of the base, test), each as one JSON line appended to `path`; `summary(path)` sums
them per arm."""

from __future__ import annotations

import collections
import functools
import json
import time

import torch
from lm_eval.models.huggingface import HFLM

from rewind.evaluate import harness
from rewind.evaluate.grid_lm import GridLM
from rewind.session import Session

ARM = {"name": ""}  # the arm being timed: set by the caller between sweeps


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def install(path: str) -> None:
    def write(record: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"arm": ARM["name"], **record}) + "\n")

    def timed(owner, name: str, describe):
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            _sync()
            start = time.perf_counter()
            out = original(*args, **kwargs)
            _sync()
            write({**describe(args, kwargs, out), "s": round(time.perf_counter() - start, 4)})
            return out

        setattr(owner, name, wrapper)

    def generate(args, kwargs, out):
        self, context = args[0], args[1] if len(args) > 1 else kwargs["context"]
        grid = isinstance(self, GridLM) and self._grid is not None
        return {
            "kind": "generate",
            "grid": grid,
            "rows": context.shape[0],
            "prompt": context.shape[1],
            "new": out.shape[1] - context.shape[1],
        }

    def forward(args, kwargs, out):
        inputs = args[1] if len(args) > 1 else kwargs["inps"]
        return {"kind": "forward", "rows": inputs.shape[0], "tokens": inputs.shape[1]}

    def scored(args, kwargs, out):
        lm = args[2] if len(args) > 2 else kwargs.get("lm")
        replay = isinstance(lm, GridLM) and lm._replaying is not None
        return {"kind": "score", "task": args[1].name, "split": args[0].split, "replay": replay}

    def phase(name):
        return lambda args, kwargs, out: {"kind": "phase", "phase": name if name != "evaluate" else args[2]}

    timed(HFLM, "_model_generate", generate)
    timed(HFLM, "_model_call", forward)
    timed(harness.Evaluator, "score", scored)
    for name in ("open", "evaluate", "repeat_base"):
        timed(Session, name, phase(name))


def summary(path: str) -> dict:
    """{arm: {what: seconds}}: the phases, and within them generation, forwards and replayed scoring."""
    out: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    for line in open(path):
        r = json.loads(line)
        key = _part(r)
        if key:
            out[r["arm"]][key] += r["s"]
    return {arm: {k: round(v, 2) for k, v in parts.items()} for arm, parts in out.items()}


def _part(r: dict) -> str | None:
    if r["kind"] == "phase":
        return "phase " + r["phase"]
    if r["kind"] == "score":
        return "replays" if r["replay"] else None  # a pass's scoring holds its generate or forwards
    if r["kind"] == "generate":
        return "generate " + ("grid" if r["grid"] else "point")
    return "forward"
