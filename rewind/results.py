"""A sweep's points and the log of their scores (results.jsonl).

A `Point` is one thing a sweep evaluates, of one `kind`:
- base: the base model (alpha 0 on every path), key "base@0";
- final: the finetune as trained (alpha 1), key "final@1";
- path: `alpha` on the path named `path` (and the sweep's --layers schedule, if it has one), key "linear@0.4";
- train: a training checkpoint of the finetune at its `step`, key "train@200";
- searched: `layers`, one alpha per transformer layer on `path`, found by `rewind search`; `alpha` is that of the
  tensors outside the layers. Key "linear@1[1x8,0.8x8,1x14]".

results.jsonl has one line per point x task x split. A line names its point by "point" (the key), "path" (the
path's name, or "base", "final", "train"), "alpha" (a train point's: its step) and "layers" (a list, or null); the
rest is the task's result (harness.TaskResult), its "role" (target, general, pass@k), timings, and how it ran:
"ran" ("grid": in one batched pass of "group" points; "point": alone; absent in lines from before grid mode).
`Point.of` reads a point back from a line, or from a row of summary.json, which names it the same way. A `Scored`
is a point's scores on one split (report.py computes them from the lines).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from .errors import RewindError

VALIDATION, TEST = "validation", "test"
SWEEP_FILE, RESULTS_FILE, SEARCH_FILE = "sweep.json", "results.jsonl", "search.json"
KINDS = ("base", "final", "path", "train", "searched")
RECORD_KEYS = ("run", "point", "path", "alpha", "split", "role", "suite", "task", "score")


@dataclass(frozen=True)
class Point:
    kind: str  # one of KINDS
    path: str | None = None  # path, searched: the path's name
    alpha: float = 0.0  # where on the path: base 0, final 1, train 1 (the checkpoint as it is)
    step: int | None = None  # train: the checkpoint's training step
    layers: tuple[float, ...] | None = None  # searched: one alpha per transformer layer

    @classmethod
    def at(cls, path: str, alpha: float, layers: Sequence[float] | None = None) -> Point:
        """`alpha` on `path` (with `layers`: per layer) under the key the sweep gives it: every layer at `alpha` is
        the uniform point, and uniform alpha 0 or 1 is the base or the final point, whatever the path."""
        if layers is not None and any(a != alpha for a in layers):
            return cls("searched", path, float(alpha), layers=tuple(layers))
        if alpha in (0.0, 1.0):
            return BASE if alpha == 0.0 else FINAL
        return cls("path", path, float(alpha))

    @classmethod
    def train(cls, step: int) -> Point:
        return cls("train", alpha=1.0, step=int(step))

    @classmethod
    def of(cls, named: dict) -> Point:
        """The point a results.jsonl line or a summary.json row names (see the module docstring)."""
        path, alpha = named["path"], named["alpha"]
        if path in ("base", "final"):
            return BASE if path == "base" else FINAL
        if path == "train":
            return cls.train(int(alpha))
        layers = named.get("layers")
        return cls("searched", path, alpha, layers=tuple(layers)) if layers else cls("path", path, alpha)

    @property
    def name(self) -> str:
        """The "path" a line records: the path's name, or the kind of a point that is on no one path."""
        return self.path if self.kind in ("path", "searched") else self.kind

    @property
    def position(self) -> float:
        """The "alpha" a line records: the alpha, or a train point's step."""
        return float(self.step) if self.kind == "train" else self.alpha

    @property
    def key(self) -> str:
        key = f"{self.name}@{self.position:g}"
        return key if self.layers is None else f"{key}[{compact(self.layers)}]"

    def fields(self) -> dict:
        """How a line or row names the point, beside its key."""
        return {"path": self.name, "alpha": self.position, "layers": list(self.layers) if self.layers else None}


BASE, FINAL = Point("base", alpha=0.0), Point("final", alpha=1.0)


@dataclass(frozen=True)
class Scored:
    """A point's scores on one split."""

    point: Point
    target: float
    general: float
    seconds: float | None = None  # how long the point's evaluation took
    passes: dict[str, float] = field(default_factory=dict)  # {"pass@k": 0-100} for each k of --pass-k
    ran: str | None = None  # how its tasks ran: "grid", "point" or "grid+point" (issue 16); None: not recorded
    target_ci: list[float] | None = None  # [low, high] where the sweep has per-item scores (items.py)
    general_ci: list[float] | None = None

    @property
    def key(self) -> str:
        return self.point.key

    def row(self) -> dict:
        """The point's row in summary.json (intervals only where there are some: older sweeps' rows as they were)."""
        scores = {"target": self.target, "general": self.general, "seconds": self.seconds}
        ci = {"target_ci": self.target_ci, "general_ci": self.general_ci} if self.target_ci is not None else {}
        return {"key": self.key, **self.point.fields(), **scores, **ci, **self.passes, "ran": self.ran}


def search_rows(search: dict):
    """(name, validation row, test row or {}) of search.json's base, final, best uniform and searched points."""
    for name in ("base", "final", "best_uniform", "searched"):
        yield name, search[name], search[name].get("test") or {}


def compact(values: Iterable[float]) -> str:
    """Run-length form of a per-layer schedule: 0.6x8,0.8x8,1x14 (short keys for tables and plots)."""
    runs = ((v, len(list(run))) for v, run in itertools.groupby(values))
    return ",".join(f"{v:g}" if n == 1 else f"{v:g}x{n}" for v, n in runs)


def plan(alphas: Sequence[float], path_names: Sequence[str], steps: Iterable[int]) -> list[Point]:
    """Base and final first (shared by all paths), then each path's interior alphas, then training checkpoints."""
    points = [BASE, FINAL]
    for name in path_names:
        points += [Point.at(name, a) for a in alphas if a not in (0.0, 1.0)]
    return points + [Point.train(s) for s in steps]


def known(planned: list[Point], records: list[dict]) -> list[Point]:
    """The planned points, then any other point the records score on validation (e.g. `rewind search`'s), in the
    order they were logged."""
    seen = {p.key for p in planned}
    extra: dict[str, Point] = {}
    for r in records:
        if r["point"] not in seen and r["split"] == VALIDATION:
            extra.setdefault(r["point"], Point.of(r))
    return planned + list(extra.values())


def shard(points: list[Point], done: set[tuple[str, str]], rank: int, world: int) -> list[Point]:
    """This rank's unfinished validation points. The planned list is sharded first, then finished points are
    skipped, so a rank owns the same points whenever it reads the log; sharding what is left would shift with each
    rank's timing, evaluating some points twice and others never."""
    return [p for p in points[rank::world] if (p.key, VALIDATION) not in done]


def finished(records: list[dict], tasks: int) -> set[tuple[str, str]]:
    """(point key, split) of every point the records score on all of its `tasks` tasks."""
    scored: dict[tuple[str, str], set] = {}
    for r in records:
        scored.setdefault((r["point"], r["split"]), set()).add((r["suite"], r["task"]))
    return {key for key, done in scored.items() if len(done) >= tasks}


def read_record(out: Path, hint: str = "") -> dict:
    """sweep.json's object in sweep dir `out`; none there is a one-line error (`hint`: what else the user may do)."""
    if not (out / SWEEP_FILE).is_file():
        raise RewindError(f"no sweep in {out} (no {SWEEP_FILE}): run `rewind sweep` first{hint}")
    return files.read_json(out / SWEEP_FILE, "sweep record")


class JsonlLog:
    """Append-only JSONL. A point's lines go out in one locked, fsynced write, each line marked `"part": [i, n]`
    (its place among the point's n lines), so a point cut short by a kill is dropped whole, never half counted.
    A subclass names the `KEYS` every line must have: `ResultsLog`, and items.ItemsLog (per-item scores)."""

    KEYS: tuple[str, ...] = ()

    def __init__(self, path: Path, repair: bool = True):
        self.path = path
        if repair:  # readers that only report (rewind report) leave the file as it is
            self._repair()

    def _repair(self) -> None:
        # A kill during a write can leave a torn last line or the first lines of a point: cut back to the last
        # whole point, so the rerun appends that point once, after valid JSONL. Truncating needs no free space.
        if not self.path.is_file() or self._parse(self.path.read_bytes())[1] == self.path.stat().st_size:
            return  # whole (or absent): no need to open it for writing
        with open(self.path, "rb+") as f, _locked(f):  # read again under the lock: another rank may append
            data = f.read()
            _, end = self._parse(data)
            if end < len(data):
                f.truncate(end)

    def _parse(self, data: bytes) -> tuple[list[dict], int]:
        """(records of whole points, bytes up to the end of the last whole point); a damaged line is an error."""
        lines = data.split(b"\n")[:-1]  # what follows the last newline is a torn line (or nothing): dropped
        records, group, offset, end = [], [], 0, 0
        for number, line in enumerate(lines, 1):
            offset += len(line) + 1
            if not line.strip():
                continue
            record = self._record(line, number)
            i, n = record.get("part", (0, 1))  # lines written before parts existed: one point each
            # The point's next line, or a new point's first (a point cut short inside the file is skipped).
            group = group + [record] if i == len(group) else [record] if i == 0 else []
            if group and len(group) == n:
                records += group
                group, end = [], offset
        return records, end

    def _record(self, line: bytes, number: int) -> dict:
        try:
            record = json.loads(line)
            part = record.get("part", (0, 1))
            if not all(key in record for key in self.KEYS) or not (len(part) == 2 and 0 <= part[0] < part[1]):
                raise ValueError("not a results record")
        except (ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError and UnicodeDecodeError included
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not a results record"
            raise RewindError(
                f"{self.path} line {number}: damaged ({why}); delete that line (its point is "
                f"evaluated again) or the whole file to start over, then rerun"
            ) from None
        return record

    def records(self, run_id: str | None = None) -> list[dict]:
        if not self.path.is_file():
            return []
        records, _ = self._parse(self.path.read_bytes())
        return [r for r in records if run_id is None or r.get("run") == run_id]

    def append(self, records: list[dict]) -> None:
        data = "".join(
            json.dumps({**r, "part": [i, len(records)]}, sort_keys=True) + "\n" for i, r in enumerate(records)
        ).encode()
        with open(self.path, "ab", buffering=0) as f, _locked(f):
            size = f.seek(0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:  # one write() unless the disk fills up
                    view = view[f.write(view) :]
                os.fsync(f.fileno())
            except OSError as exc:  # e.g. disk full: drop the partial point, keep every finished one
                f.truncate(size)
                raise RewindError(
                    f"{self.path}: cannot write results ({exc.strerror}); free space and rerun the "
                    f"same command (finished points are kept)"
                ) from exc


class ResultsLog(JsonlLog):
    """results.jsonl."""

    KEYS = RECORD_KEYS


@contextlib.contextmanager
def _locked(f):
    """Ranks of a multi-GPU sweep share results.jsonl: a repair must not cut a point another rank is appending."""
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield f
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
