"""`rewind sweep`: evaluate a resident model along paths, stream results, pick the Pareto-best point.

One model stays loaded; each point is an in-place alpha switch plus lm-eval on the live model. Results stream to
results.jsonl (one line per point x task x split, written whole and flushed as each point finishes), so a killed
sweep rerun with the same command skips what is done. Selection uses the validation split; the chosen point, the
base and the final adapter are then scored on the test split.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from . import adapters, engine, files, models, pareto, paths
from .errors import RewindError
from .evaluate.harness import CHAT_TEMPLATE_MODES, suite_means

VALIDATION, TEST = "validation", "test"
SWEEP_FILE, RESULTS_FILE, SUMMARY_FILE, PLOT_FILE = "sweep.json", "results.jsonl", "summary.json", "pareto.png"
DEFAULT_OUT = "rewind-sweep"
DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
log = logging.getLogger(__name__)


@dataclass
class SweepSpec:
    adapter: str
    base: str | None = None
    paths: list[str] = field(default_factory=lambda: ["auto"])
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    target: list[str] = field(default_factory=lambda: ["math-offline"])
    general: list[str] = field(default_factory=lambda: ["general-offline"])
    limit: int | None = None
    layers: str | None = None  # a layer schedule applied on every path
    cayley_scale: str = "linear"
    init_adapter: str | None = None
    checkpoints: str | None = None  # glob of a training run's checkpoint dirs: one more path, "train"
    select: str = "max-target-within"
    tolerance: float = 1.0
    weight: float = 0.5
    dtype: str = "auto"  # bf16 on an accelerator, fp32 on a CPU
    device: str | None = None
    batch_size: int | str | None = None  # None: lm-eval's default for the device (harness.Evaluator)
    allow_extrapolation: bool = False
    pass_k: list[int] = field(default_factory=list)  # sampled pass@k beside greedy accuracy, generation tasks
    chat_template: str = "auto"  # for tasks that ask for it: auto (if the tokenizer has one), on, off
    include_path: list[str] = field(default_factory=list)  # dirs of task YAMLs, as lm-eval's --include_path
    metric: dict[str, str] = field(default_factory=dict)  # {task or suite: lm-eval metric} scoring it

    def checkpoint_dirs(self) -> list[Path]:
        if not self.checkpoints:
            return []
        found = sorted((Path(p) for p in glob.glob(self.checkpoints) if Path(p).is_dir()), key=_step)
        if not found:
            raise RewindError(f"--checkpoints {self.checkpoints}: no checkpoint dirs match")
        return found

    def run_id(self, adapter_sha: str, chat: bool = True, splits: dict | None = None) -> str:
        """Everything that changes a score; not alphas or the rule (adding points or reselecting reuses results).
        `chat`: whether the chat template is applied (where tasks ask for it); `splits`: what each phase scores of
        each task not bundled (the bundled tasks' splits are fixed)."""
        facts = {
            "base": models.hub_id(self.base),
            "adapter": adapter_sha,
            "init": self.init_adapter,
            "target": self.target,
            "general": self.general,
            "limit": self.limit,
            "layers": self.layers,
            "cayley_scale": self.cayley_scale,
            "dtype": self.dtype,
            "pass_k": sorted(self.pass_k),
            "checkpoints": [str(p) for p in self.checkpoint_dirs()],
        }
        if not chat:  # only then: sweeps from before --chat-template (which always applied it) keep their id
            facts["chat_template"] = False
        # Likewise only where given: a sweep of bundled suites keeps its run id (and its results) from before.
        more = {"include_path": self.include_path, "metric": self.metric, "splits": splits}
        facts |= {key: value for key, value in more.items() if value}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def _check(spec: SweepSpec) -> None:
    """What the spec alone shows to be wrong, before anything loads (the CLI's types check most of it too)."""
    models.pick_device(spec.device)
    if (
        not spec.alphas
        or not all(math.isfinite(a) for a in spec.alphas)
        or (any(not 0 <= a <= 1 for a in spec.alphas) and not spec.allow_extrapolation)
    ):
        raise RewindError("--alphas must lie in [0, 1] (or pass --allow-extrapolation)")
    if spec.limit is not None and spec.limit < 1:
        raise RewindError(f"--limit {spec.limit}: give at least 1 item per task")
    if any(k < 1 for k in spec.pass_k):
        raise RewindError(f"--pass-k {','.join(map(str, spec.pass_k))}: k must be at least 1")
    if spec.chat_template not in CHAT_TEMPLATE_MODES:
        raise RewindError(f"--chat-template {spec.chat_template}: use one of {', '.join(CHAT_TEMPLATE_MODES)}")


def _step(path: Path) -> int:
    m = re.search(r"(\d+)$", path.name)
    return int(m.group(1)) if m else 0


@dataclass(frozen=True)
class PointSpec:
    path: str  # a path name, or "base", "final", "train"
    alpha: float  # for "train": the checkpoint's step; with `layers`: the alpha of tensors outside the layers
    layers: tuple[float, ...] | None = None  # one alpha per transformer layer (a searched schedule)

    @property
    def key(self) -> str:
        if self.layers is None:
            return f"{self.path}@{self.alpha:g}"
        return f"{self.path}@{self.alpha:g}[{compact(self.layers)}]"

    @classmethod
    def of(cls, record: dict) -> PointSpec:
        layers = record.get("layers")
        return cls(record["path"], record["alpha"], tuple(layers) if layers else None)


def compact(values) -> str:
    """Run-length form of a per-layer schedule: 0.6x8,0.8x8,1x14 (short keys for tables and plots)."""
    runs = ((v, len(list(run))) for v, run in itertools.groupby(values))
    return ",".join(f"{v:g}" if n == 1 else f"{v:g}x{n}" for v, n in runs)


def plan_points(spec: SweepSpec, path_names: list[str]) -> list[PointSpec]:
    """Base and final first (shared by all paths), then each path's interior alphas, then training checkpoints."""
    points = [PointSpec("base", 0.0), PointSpec("final", 1.0)]
    for name in path_names:
        points += [PointSpec(name, a) for a in spec.alphas if a not in (0.0, 1.0)]
    points += [PointSpec("train", float(_step(d))) for d in spec.checkpoint_dirs()]
    return points


def shard(points: list[PointSpec], done: set[tuple[str, str]], rank: int, world: int) -> list[PointSpec]:
    """This rank's unfinished validation points. The planned list is sharded first, then finished points are
    skipped, so a rank owns the same points whenever it reads the log; sharding what is left would shift with each
    rank's timing, evaluating some points twice and others never."""
    return [p for p in points[rank::world] if (p.key, VALIDATION) not in done]


class ResultsLog:
    """Append-only JSONL. A point's lines go out in one locked, fsynced write, each line marked `"part": [i, n]`
    (its place among the point's n lines), so a point cut short by a kill is dropped whole, never half counted."""

    def __init__(self, path: Path):
        self.path = path
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
            if not all(key in record for key in RECORD_KEYS) or not (len(part) == 2 and 0 <= part[0] < part[1]):
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


RECORD_KEYS = ("run", "point", "path", "alpha", "split", "role", "suite", "task", "score")


@contextlib.contextmanager
def _locked(f):
    """Ranks of a multi-GPU sweep share results.jsonl: a repair must not cut a point another rank is appending."""
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield f
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def point_scores(records: list[dict], target: list[str], general: list[str]) -> tuple[float, float]:
    """(target, general): each the mean over its suites of the suite's mean task score. A suite without a score
    is an error: a mean over what is left would compare points on different tasks."""

    means = suite_means((r["suite"], r["score"]) for r in records)

    def role_score(suites):
        for suite in suites:
            if suite not in means:
                point, split = records[0]["point"], records[0]["split"]
                raise RewindError(
                    f"point {point}, {split}: suite {suite} has no score in results.jsonl; rerun "
                    f"the sweep to evaluate it"
                )
        return sum(means[s] for s in suites) / len(suites)

    return role_score(target), role_score(general)


def pass_scores(records: list[dict], ks: list[int]) -> dict:
    """{"pass@k": mean over the point's sampled generation tasks, 0-100} for each k asked for."""
    sampled = [r for r in records if r["role"] == "pass@k"]
    if not ks or not sampled:
        return {}
    return {
        f"pass@{k}": 100 * sum(r["metrics"][f"pass@{k},pass_at_k"] for r in sampled) / len(sampled) for k in sorted(ks)
    }


class Sweep:
    def __init__(self, spec: SweepSpec, out: str | Path = DEFAULT_OUT):
        from .evaluate import harness

        self.spec, self.out = spec, Path(out)
        _check(spec)
        spec.dtype = models.resolve_dtype(spec.dtype, spec.device)  # the run id records what actually ran
        # Unknown names fail before any loading.
        self.suites = harness.resolve_suites(spec.target + spec.general, spec.include_path)
        self.schedule = paths.Schedule.parse(spec.layers)
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    # -- set-up ---------------------------------------------------------------------------------------------
    def _load(self):
        from .evaluate import harness

        device = self.spec.device
        if self.world > 1 and (device or models.pick_device()).startswith("cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', self.rank)}"
        self.model, self.tokenizer = models.load_base(self.spec.base, device, self.spec.dtype)
        params = dict(self.model.named_parameters(remove_duplicate=False))
        shapes = {n: p.shape for n, p in params.items()}
        self.update = adapters.read(
            self.spec.adapter,
            shapes,
            self.spec.init_adapter,
            base_tensor=lambda n: params[n].detach(),
            base_config=self.model.config.to_dict(),
        )
        path_classes = list(dict.fromkeys(paths.resolve(p, self.update.natural_path) for p in self.spec.paths))
        for path_cls in path_classes:  # refuse now, not after the base point was evaluated
            if not all(path_cls.accepts(d) for d in self.update.deltas.values()):
                raise RewindError(
                    f"path {path_cls.name!r} does not apply to {self.update.method.name}; try --path auto"
                )
        self.path_names = [c.name for c in path_classes]
        names, layers = list(self.update.deltas), int(self.model.config.num_hidden_layers)
        for alpha in self.spec.alphas:
            if self.schedule.kind != "balanced":  # balanced needs W0 norms; its alphas never exceed the global one
                engine.tensor_alphas(
                    names, engine.Point("", alpha, self.schedule), layers, None, self.spec.allow_extrapolation
                )
        self.chat = self._chat_template()
        self.rewinders: dict[str, engine.Rewinder] = {}
        self._checkpoint: engine.Rewinder | None = None  # a training checkpoint's weights currently in the model
        self.evaluators = {
            split: harness.Evaluator(
                self.model,
                self.tokenizer,
                self.suites,
                split=split,
                limit=self.spec.limit,
                batch_size=self.spec.batch_size,
                pass_k=self.spec.pass_k,
                chat_template="on" if self.chat else "off",
                metrics=self.spec.metric,
            )
            for split in (VALIDATION, TEST)
        }
        plans = {split: evaluator.split_plan() for split, evaluator in self.evaluators.items()}
        self.splits = {task: {split: plans[split][task] for split in plans} for task in plans[VALIDATION]}
        unbundled = {task: plan for task, plan in self.splits.items() if not harness.is_bundled(task)}
        self.run_id = self.spec.run_id(self.update.sha256, self.chat, unbundled)

    def _chat_template(self) -> bool:
        from .evaluate import harness

        chat = harness.use_chat_template(self.spec.chat_template, self.tokenizer)
        if not chat and self.spec.chat_template == "auto":
            log.warning(
                "--base %s has no chat template: tasks that ask for one get plain prompts (--chat-template off)",
                models.hub_id(self.spec.base),
            )
        return chat

    def _rewinder(self, path: str) -> engine.Rewinder:
        if path not in self.rewinders:
            shared = next(iter(self.rewinders.values()), None)
            self.rewinders[path] = engine.Rewinder(
                self.model, self.update, path, self.spec.cayley_scale, self.tokenizer, w0=shared.w0 if shared else None
            )
        return self.rewinders[path]

    def _move(self, point: PointSpec) -> None:
        """Put the model at `point`."""
        if self._checkpoint is not None:
            self._checkpoint.set(0.0)
            self._checkpoint = None
        natural = self._rewinder(self.path_names[0])
        if point.path == "base":
            natural.set(0.0)
        elif point.path == "final":
            natural.set(1.0)
        elif point.path == "train":
            self._load_checkpoint(point)
        elif point.layers is not None:
            self._rewinder(point.path).set(
                point.alpha, paths.Schedule("list", point.layers), self.spec.allow_extrapolation
            )
        else:
            self._rewinder(point.path).set(point.alpha, self.schedule, self.spec.allow_extrapolation)

    def _load_checkpoint(self, point: PointSpec) -> None:
        directory = next(d for d in self.spec.checkpoint_dirs() if _step(d) == point.alpha)
        natural = self._rewinder(self.path_names[0])
        params = dict(self.model.named_parameters(remove_duplicate=False))
        update = adapters.read(
            directory, {n: p.shape for n, p in params.items()}, None, base_tensor=natural.w0.__getitem__
        )
        natural.set(0.0)
        self._checkpoint = engine.Rewinder(self.model, update, "auto", self.spec.cayley_scale, w0=natural.w0)
        self._checkpoint.set(1.0)

    # -- running --------------------------------------------------------------------------------------------
    def _done(self) -> set[tuple[str, str]]:
        n_tasks = {}
        for r in self.log.records(self.run_id):
            n_tasks.setdefault((r["point"], r["split"]), set()).add((r["suite"], r["task"]))
        expected = len(self.evaluators[VALIDATION].entries)
        return {key for key, tasks in n_tasks.items() if len(tasks) >= expected}

    def evaluate(self, point: PointSpec, split: str) -> list[dict]:
        """Move the model to `point`, score it on `split`, append its lines to results.jsonl."""
        from .evaluate import harness

        role = {s: "target" for s in self.spec.target} | {s: "general" for s in self.spec.general}
        role |= {s + harness.PASS_SUFFIX: "pass@k" for s in role}
        start = time.perf_counter()
        self._move(point)
        switch = time.perf_counter() - start
        results = self.evaluators[split].run()
        elapsed = time.perf_counter() - start
        records = [
            {
                "run": self.run_id,
                "point": point.key,
                "path": point.path,
                "alpha": point.alpha,
                "layers": list(point.layers) if point.layers else None,
                "split": split,
                "role": role[r.suite],
                **asdict(r),
                "device": str(self.model.device),
                "switch_seconds": round(switch, 4),
                "point_seconds": round(elapsed, 3),
            }
            for r in results
        ]
        self.log.append(records)
        return records

    def open(self) -> None:
        """Everything before the first point: check results.jsonl, load the model, bind the paths."""
        self.log = ResultsLog(self.out / RESULTS_FILE)  # a damaged log fails before the model loads
        self._load()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RewindError(f"--out {self.out}: cannot create ({exc.strerror}); choose another --out") from exc
        self._write_spec()

    def run(self, progress: bool = True) -> dict:
        self.open()
        points = plan_points(self.spec, self.path_names)
        todo = shard(points, self._done(), self.rank, self.world)
        for point in tqdm(todo, desc="sweep", unit="point", disable=not progress or self.rank != 0):
            self.evaluate(point, VALIDATION)
        _barrier(self.world)
        if self.rank != 0:
            return {}
        points = self.known_points(points)
        selection = self.select(points)
        self.evaluate_test(points, ["base@0", "final@1", selection["selected"]["key"]])
        return self.summarize(points, selection["selected"]["key"])

    def known_points(self, planned: list[PointSpec]) -> list[PointSpec]:
        """The planned points, then any other point this run has evaluated (e.g. by `rewind search`)."""
        seen = {p.key for p in planned}
        extra = {}
        for r in self.log.records(self.run_id):
            if r["point"] not in seen and r["split"] == VALIDATION:
                extra.setdefault(r["point"], PointSpec.of(r))
        return planned + list(extra.values())

    def evaluate_test(self, points: list[PointSpec], keys: list[str]) -> None:
        done = self._done()
        for key in dict.fromkeys(keys):
            if (key, TEST) not in done:
                self.evaluate(next(p for p in points if p.key == key), TEST)

    def _write_spec(self) -> None:
        record = {
            "run": self.run_id,
            "spec": asdict(self.spec),
            "paths": self.path_names,
            "method": self.update.method.name,
            "natural_path": self.update.natural_path,
            "chat_template": self.chat,  # what --chat-template resolved to
            "splits": self.splits,
        }
        files.write_json(self.out / SWEEP_FILE, record)

    # -- selection and report -------------------------------------------------------------------------------
    def scored(self, points: list[PointSpec], split: str) -> list[dict]:
        records = [r for r in self.log.records(self.run_id) if r["split"] == split]
        rows = []
        for p in points:
            mine = [r for r in records if r["point"] == p.key]
            if mine:
                target, general = point_scores(mine, self.spec.target, self.spec.general)
                rows.append(
                    {
                        "key": p.key,
                        "path": p.path,
                        "alpha": p.alpha,
                        "layers": list(p.layers) if p.layers else None,
                        "target": target,
                        "general": general,
                        "seconds": mine[0]["point_seconds"],
                        **pass_scores(mine, self.spec.pass_k),
                    }
                )
        return rows

    def select(self, points: list[PointSpec]) -> dict:
        rows = self.scored(points, VALIDATION)
        scored = [pareto.Scored(r["key"], r["target"], r["general"]) for r in rows]
        base = next(s for s in scored if s.key == "base@0")
        chosen = pareto.select(scored, base, self.spec.select, self.spec.tolerance, self.spec.weight)
        return {
            "selected": next(r for r in rows if r["key"] == chosen.key),
            "frontier": [s.key for s in pareto.frontier(scored)],
            "rows": rows,
        }

    def metrics(self) -> dict[str, dict[str, str]]:
        """{"target" | "general": {task: the lm-eval metric its score is}}, as the base point was scored."""
        out: dict[str, dict[str, str]] = {}
        for r in self.log.records(self.run_id):
            if r["point"] == "base@0" and r["split"] == VALIDATION and r["role"] in ("target", "general"):
                out.setdefault(r["role"], {})[r["task"]] = r["metric"]
        return out

    def summarize(self, points: list[PointSpec], selected_key: str) -> dict:
        from .plots import pareto_plot

        selection = self.select(points)
        tests = {r["key"]: r for r in self.scored(points, TEST)}
        base = next(r for r in selection["rows"] if r["key"] == "base@0")
        summary = {
            "run": self.run_id,
            "base": models.hub_id(self.spec.base),
            "adapter": str(self.spec.adapter),
            "method": self.update.method.name,
            "paths": self.path_names,
            "rule": self.spec.select,
            "tolerance": self.spec.tolerance,
            "layers": self.spec.layers,
            "cayley_scale": self.spec.cayley_scale,
            "selected": {**selection["selected"], "test": tests.get(selected_key)},
            "base_point": {**base, "test": tests.get("base@0")},
            "final_point": {
                **next(r for r in selection["rows"] if r["key"] == "final@1"),
                "test": tests.get("final@1"),
            },
            "frontier": selection["frontier"],
            "points": selection["rows"],
            "metrics": self.metrics(),
        }
        files.write_json(self.out / SUMMARY_FILE, summary)
        pareto_plot(
            selection["rows"],
            set(selection["frontier"]),
            selected_key,
            self.out / PLOT_FILE,
            title=f"{summary['method']} on {summary['base']} ({', '.join(self.path_names)})",
        )
        return summary


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()


def table(summary: dict) -> str:
    """The printed table: one row per point, deltas against the base, frontier and selection marked."""
    base = summary["base_point"]
    passes = [key for key in base if key.startswith("pass@")]
    # Which metric each score is (older summaries did not record it).
    lines = [
        f"{role:<8} {', '.join(f'{task} {metric}' for task, metric in tasks.items())}"
        for role, tasks in summary.get("metrics", {}).items()
    ]
    lines += [
        f"{'path':<10} {'alpha':>6} {'target':>7} {'general':>8} {'d_target':>9} {'d_general':>10}"
        + "".join(f" {key:>8}" for key in passes)
        + "  front",
        "-" * (62 + 9 * len(passes)),
    ]
    for r in summary["points"]:
        mark = ("*" if r["key"] in summary["frontier"] else "") + (
            " <- selected" if r["key"] == summary["selected"]["key"] else ""
        )
        if r.get("layers"):
            mark += f" layers {compact(r['layers'])}"
        name = r["path"] + ("+L" if r.get("layers") else "")
        lines.append(
            f"{name:<10} {r['alpha']:>6g} {r['target']:>7.2f} {r['general']:>8.2f} "
            f"{r['target'] - base['target']:>+9.2f} {r['general'] - base['general']:>+10.2f}"
            + "".join(f" {r[key]:>8.2f}" if key in r else f" {'-':>8}" for key in passes)
            + f"  {mark}"
        )
    sel = summary["selected"]
    lines.append("")
    layers = f" layers={compact(sel['layers'])}" if sel.get("layers") else ""
    lines.append(f"selected ({summary['rule']}, validation): {sel['path']} alpha={sel['alpha']:g}{layers}")
    for name, row in [("base", base), ("final", summary["final_point"]), ("selected", sel)]:
        test = row.get("test")
        if test:
            lines.append(f"  test  {name:<9} target {test['target']:6.2f}  general {test['general']:6.2f}")
    return "\n".join(lines)


def load(out: str | Path = DEFAULT_OUT) -> tuple[dict, dict | None]:
    """(sweep.json, summary.json or None) of a sweep dir, for `rewind export` with no flags."""
    out = Path(out)
    if not (out / SWEEP_FILE).is_file():
        raise RewindError(f"no sweep in {out} (no {SWEEP_FILE}): run `rewind sweep` first, or pass --adapter")
    spec = files.read_json(out / SWEEP_FILE, "sweep record")
    summary_path = out / SUMMARY_FILE
    return spec, files.read_json(summary_path, "sweep summary") if summary_path.is_file() else None
