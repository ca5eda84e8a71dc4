"""What a sweep is given (`SweepSpec`), and the session that evaluates it: the base loaded once, the adapter read
against it, a rewinder per path, an evaluator per split. `Session.evaluate(points, split)` moves the model to each
point in place, scores it, and appends its lines to results.jsonl as it finishes (results.py), so a killed sweep
rerun with the same command skips what is done. Which points, in which order, is the caller's policy (the sweep's
grid, `rewind search`'s climb).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import adapters, engine, files, grouping, items, models, paths, progress, results
from .errors import RewindError
from .evaluate.harness import CHAT_TEMPLATE_MODES
from .results import BASE, RESULTS_FILE, SWEEP_FILE, TEST, VALIDATION, Point
from .schedule import Schedule

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
    confidence: float = 0.9  # of the paired bootstrap intervals (report.py); changes no score
    dtype: str = "auto"  # bf16 on an accelerator, fp32 on a CPU
    device: str | None = None
    batch_size: int | str | None = None  # None: lm-eval's default for the device (harness.Evaluator)
    allow_extrapolation: bool = False
    race: bool = False  # race the points over chunks of validation items (racing.py) instead of scoring them all
    budget: int | None = None  # race: item evaluations at most (points x items); None: until the items run out
    chunk: int = 32  # race: items per task a round gives every surviving point
    pass_k: list[int] = field(default_factory=list)  # sampled pass@k beside greedy accuracy, generation tasks
    chat_template: str = "auto"  # for tasks that ask for it: auto (if the tokenizer has one), on, off
    include_path: list[str] = field(default_factory=list)  # dirs of task YAMLs, as lm-eval's --include_path
    metric: dict[str, str] = field(default_factory=dict)  # {task or suite: lm-eval metric} scoring it
    batch_points: int | str = "auto"  # points per grid pass (grouping.py); 1: point by point. Not in the run id

    def checkpoint_dirs(self) -> list[Path]:
        if not self.checkpoints:
            return []
        found = sorted((Path(p) for p in glob.glob(self.checkpoints) if Path(p).is_dir()), key=_step)
        if not found:
            raise RewindError(f"--checkpoints {self.checkpoints}: no checkpoint dirs match")
        return found

    def checkpoint_steps(self) -> dict[int, Path]:
        """{training step: checkpoint dir} in step order (the first dir of a step, should two end in one number)."""
        steps: dict[int, Path] = {}
        for directory in self.checkpoint_dirs():
            steps.setdefault(_step(directory), directory)
        return steps

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
        race = {"budget": self.budget, "chunk": self.chunk} if self.race else None  # which items are scored
        more = {"include_path": self.include_path, "metric": self.metric, "splits": splits, "race": race}
        facts |= {key: value for key, value in more.items() if value}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]

    def check(self) -> None:
        """What the spec alone shows to be wrong, before anything loads (the CLI's types check most of it too)."""
        models.pick_device(self.device)
        if (
            not self.alphas
            or not all(math.isfinite(a) for a in self.alphas)
            or (any(not 0 <= a <= 1 for a in self.alphas) and not self.allow_extrapolation)
        ):
            raise RewindError("--alphas must lie in [0, 1] (or pass --allow-extrapolation)")
        if self.limit is not None and self.limit < 1:
            raise RewindError(f"--limit {self.limit}: give at least 1 item per task")
        if self.race and (self.pass_k or self.chunk < 1 or (self.budget is not None and self.budget < 1)):
            raise RewindError("--race: needs --chunk and --budget of at least 1, and no --pass-k")
        if not 0 < self.confidence < 1:
            raise RewindError(f"--confidence {self.confidence}: must lie between 0 and 1")
        if any(k < 1 for k in self.pass_k):
            raise RewindError(f"--pass-k {','.join(map(str, self.pass_k))}: k must be at least 1")
        self.batch_points = grouping.parse(self.batch_points)
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise RewindError(f"--chat-template {self.chat_template}: use one of {', '.join(CHAT_TEMPLATE_MODES)}")


def deterministic() -> None:
    """Deterministic kernels where torch has them, so a point evaluated twice scores its items the same (lm-eval
    batches the same requests the same way); cuBLAS needs its workspace fixed before its first use. An op with no
    deterministic kernel warns rather than fails: the base evaluated twice measures what is left (`repeat_base`)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def _step(path: Path) -> int:
    m = re.search(r"(\d+)$", path.name)
    return int(m.group(1)) if m else 0


class Session:
    def __init__(self, spec: SweepSpec, out: str | Path):
        """Checks what the spec alone shows to be wrong and resolves the suites; loads nothing (see `open`)."""
        from .evaluate import harness

        self.spec, self.out = spec, Path(out)
        spec.check()
        spec.dtype = models.resolve_dtype(spec.dtype, spec.device)  # the run id records what actually ran
        # Unknown names fail before any loading.
        self.suites = harness.resolve_suites(spec.target + spec.general, spec.include_path)
        self.schedule = Schedule.parse(spec.layers)
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.bar: progress.Work | None = None  # the job's bar (sweep or search), ticked once per task scored

    # -- set-up ---------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Everything before the first point: check results.jsonl, load the model, bind the paths."""
        self.log = results.ResultsLog(self.out / RESULTS_FILE)  # a damaged log fails before the model loads
        self.items = items.ItemsLog(self.out / items.ITEMS_FILE)
        self.fresh_items: list[dict] = []
        self._load()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RewindError(f"--out {self.out}: cannot create ({exc.strerror}); choose another --out") from exc
        files.write_json(self.out / SWEEP_FILE, self.record)

    def _load(self) -> None:
        deterministic()
        device = self.spec.device
        if self.world > 1 and (device or models.pick_device()).startswith("cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', self.rank)}"
        self.model, self.tokenizer = models.load_base(self.spec.base, device, self.spec.dtype)
        self.update = adapters.read(self.spec.adapter, engine.ModelTensors(self.model), self.spec.init_adapter)
        self.path_names = self._path_names()
        self._check_alphas()
        self.chat = self._chat_template()
        self.rewinders: dict[str, engine.Rewinder] = {}
        self._checkpoint: engine.Rewinder | None = None  # a training checkpoint's weights currently in the model
        # path -> its installed rewind.grid.Grid, and "stacked" -> the stacked grid; None: that one cannot grid
        self.grids: dict[str, object] = {}
        self.grid_lms: dict[str, object] = {}  # split -> its evaluate.grid_lm.GridLM
        self._evaluators()

    def _path_names(self) -> list[str]:
        path_classes = list(dict.fromkeys(paths.resolve(p, self.update.natural_path) for p in self.spec.paths))
        for path_cls in path_classes:  # refuse now, not after the base point was evaluated
            path_cls.check(self.update.deltas, self.update.method.name)
        return [c.name for c in path_classes]

    def _check_alphas(self) -> None:
        names = list(self.update.deltas)
        for alpha in self.spec.alphas:
            if self.schedule.kind != "balanced":  # balanced needs W0 norms; its alphas never exceed the global one
                engine.tensor_alphas(
                    names, engine.Point("", alpha, self.schedule), self.num_layers, None, self.spec.allow_extrapolation
                )

    def _chat_template(self) -> bool:
        from .evaluate import harness

        chat = harness.use_chat_template(self.spec.chat_template, self.tokenizer)
        if not chat and self.spec.chat_template == "auto":
            log.warning(
                "--base %s has no chat template: tasks that ask for one get plain prompts (--chat-template off)",
                models.hub_id(self.spec.base),
            )
        return chat

    def _evaluators(self) -> None:
        from .evaluate import harness

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
        role = {s: "target" for s in self.spec.target} | {s: "general" for s in self.spec.general}
        self.roles = role | {s + harness.PASS_SUFFIX: "pass@k" for s in role}

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def record(self) -> dict:
        """sweep.json's object: what the sweep is (its report is computed from this and results.jsonl)."""
        return {
            "run": self.run_id,
            "spec": asdict(self.spec),
            "paths": self.path_names,
            "method": self.update.method.name,
            "natural_path": self.update.natural_path,
            "chat_template": self.chat,  # what --chat-template resolved to
            "splits": self.splits,
        }

    # -- points ---------------------------------------------------------------------------------------------
    def planned(self) -> list[Point]:
        return results.plan(self.spec.alphas, self.path_names, self.spec.checkpoint_steps())

    def records(self) -> list[dict]:
        """This run's lines of results.jsonl."""
        return self.log.records(self.run_id)

    @property
    def tasks(self) -> int:
        """Tasks scored per point and split (what the progress bar counts)."""
        return len(self.evaluators[VALIDATION].entries)

    def item_records(self) -> list[dict]:
        """This run's lines of items.jsonl."""
        return self.items.records(self.run_id)

    def take_items(self) -> list[dict]:
        """The items lines this session appended since the last call (what a report is extended by)."""
        fresh, self.fresh_items = self.fresh_items, []
        return fresh

    def finished(self) -> set[tuple[str, str]]:
        """(point key, split) of every point this run has scored on every task, its items logged too. A sweep
        from before items.jsonl (none of its lines there) resumes as it was, without intervals."""
        done, logged = results.finished(self.records(), self.tasks), self.item_records()
        return done & results.finished(logged, self.tasks) if logged or not done else done

    def evaluate(self, points: list[Point], split: str) -> list[dict]:
        """Score on `split` each of `points` that this run has not scored there yet; returns the new lines. Points
        are scored in groups, one grid pass per request kind for all tasks (--batch-points; grouping.py)."""
        done, out = self.finished(), []
        todo = [point for point in dict.fromkeys(points) if (point.key, split) not in done]
        if self.bar is not None:
            self.bar.cover(len(todo) * self.tasks)
        per_pass = grouping.points_per_pass(self.spec.batch_points, self.model.device)
        stack = self._stack(todo, per_pass)
        for group in grouping.groups(todo, per_pass, self.path_names[0], mixed=stack is not None):
            grid = None if len(group) < 2 else stack or self._grid(grouping.path_of(group[0], self.path_names[0]))
            if grid is None:
                for point in group:
                    out += self._evaluate(point, split)
            else:
                out += self._evaluate_group(group, split, grid)
        return out

    def _evaluate(self, point: Point, split: str) -> list[dict]:
        """Move the model to `point`, score it on `split`, append its lines to results.jsonl."""
        start = time.perf_counter()
        self._move(point)
        switch = time.perf_counter() - start
        self._at([point], split)
        scored = self.evaluators[split].run(self._tick)
        records = self._lines(point, split, [(r, "point") for r in scored], 1, switch, time.perf_counter() - start)
        self._append(point, split, records, scored)
        return records

    def _evaluate_group(self, points: list[Point], split: str, grid) -> list[dict]:
        """Score `points` (of one path, or any on a stack) on `split`: the tasks that grid in one grid pass per
        request kind, all of them together (grid_lm.score), the others point by point; then append each point's
        lines (a kill loses at most this group)."""
        from .evaluate import grid_lm

        start, evaluator, switch = time.perf_counter(), self.evaluators[split], 0.0
        self._at(points, split)
        gridded = [entry for entry in evaluator.entries if self._grids(entry)]
        by_entry: dict[int, list] = {}  # by id: a task and its pass@k entry share a name
        if gridded:
            self._move(BASE)  # the grid's branches add each row's point to the base weights
            at = [self._engine_point(p) for p in points]
            tick = functools.partial(self._tick, points=len(points))  # a task scored at every point of the group
            scored_tasks = grid_lm.score(evaluator, gridded, self._grid_lm(split), grid, at, tick)
            by_entry = {id(entry): [(r, "grid") for r in rs] for entry, rs in zip(gridded, scored_tasks)}
        scored: list[list] = [[] for _ in points]
        for entry in evaluator.entries:
            if id(entry) in by_entry:
                for mine, result in zip(scored, by_entry[id(entry)]):
                    mine.append(result)
                continue
            for point, mine in zip(points, scored):
                moved = time.perf_counter()
                self._move(point)
                switch += time.perf_counter() - moved
                mine.append((evaluator.score(entry), "point"))
                self._tick(entry.name)
        share = (time.perf_counter() - start) / len(points)
        out = []
        for point, mine in zip(points, scored):
            records = self._lines(point, split, mine, len(points), switch / len(points), share)
            self._append(point, split, records, [r for r, _ in mine])
            out += records
        return out

    def _grids(self, entry) -> bool:
        """Whether the task of `entry` runs in the grid pass (grouping.grids, from its request kinds)."""
        types = [leaf.get_config("output_type") for leaf in entry.loaded["tasks"].values()]
        return grouping.grids(types, self.model, self.spec.batch_points)

    def _lines(self, point: Point, split: str, scored: list, group: int, switch: float, seconds: float) -> list[dict]:
        """A point's lines of results.jsonl: (TaskResult, how it ran: grid or point) per task."""
        heads = self._heads(point, split, [r for r, _ in scored])
        return [
            {
                **head,
                **{k: v for k, v in asdict(r).items() if k != "items"},  # the items go to items.jsonl
                "device": str(self.model.device),
                "switch_seconds": round(switch, 4),
                "point_seconds": round(seconds, 3),
                "ran": ran,
                "group": group if ran == "grid" else 1,
            }
            for head, (r, ran) in zip(heads, scored)
        ]

    def _append(self, point: Point, split: str, records: list[dict], scored: list) -> None:
        """A point's lines: its items (from `scored`, its TaskResults) to items.jsonl first, then its results, so a
        point whose results are logged has its items logged too."""
        self._log_items([items.line(head, r) for head, r in zip(self._heads(point, split, scored), scored)])
        self.log.append(records)

    def _log_items(self, logged: list[dict]) -> None:
        """Append items lines, and keep them for the report's next extension (take_items)."""
        self.items.append(logged)
        self.fresh_items += logged

    def _at(self, points: list[Point], split: str) -> None:
        """The bar's current work: a point, or a group's first and last points."""
        if self.bar is not None:
            group = f"{points[0].key}..{points[-1].key} (grid of {len(points)})" if len(points) > 1 else points[0].key
            self.bar.at(f"{group} {split}")

    def _tick(self, _task: str, points: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(points)

    def _heads(self, point: Point, split: str, scored: list) -> list[dict]:
        """How each line of a point's evaluation names it."""
        named = {"run": self.run_id, "point": point.key, **point.fields(), "split": split}
        return [{**named, "role": self.roles[r.suite]} for r in scored]

    def repeat_base(self) -> None:
        """Evaluate the base on validation once more (once per run), its items logged under split items.REPEAT: the
        items that flip between the two (report.py's noise_floor) are the noise no difference should be read in.
        The repeat runs point by point: where the first ran in a grid pass, the flips include the grid's own."""
        if (BASE.key, items.REPEAT) in results.finished(self.item_records(), self.tasks):
            return
        self._move(BASE)
        scored = self.evaluators[VALIDATION].run(self._tick)
        self._log_items([items.line(head, r) for head, r in zip(self._heads(BASE, items.REPEAT, scored), scored)])

    def evaluate_chunk(self, point: Point, task: str, chunk: slice) -> dict:
        """Score `point` on items [chunk.start, chunk.stop) of validation task `task`; append and return its items
        line (split items.RACE, with "chunk" and "seconds"): a race's unit of work."""
        self._move(point)
        start = time.perf_counter()
        result = self.evaluators[VALIDATION].run_chunk(task, chunk)
        head = {**self._heads(point, items.RACE, [result])[0], "chunk": [chunk.start, chunk.stop]}
        logged = items.line({**head, "seconds": round(time.perf_counter() - start, 3)}, result)
        self.items.append([logged])
        if self.bar is not None:
            self.bar.update(1)
        return logged

    # -- moving the model -----------------------------------------------------------------------------------
    def _rewinder(self, path: str) -> engine.Rewinder:
        if path not in self.rewinders:
            shared = next(iter(self.rewinders.values()), None)
            self.rewinders[path] = engine.Rewinder(
                self.model, self.update, path, self.spec.cayley_scale, self.tokenizer, w0=shared.w0 if shared else None
            )
        return self.rewinders[path]

    def _move(self, point: Point) -> None:
        """Put the model at `point`."""
        if self._checkpoint is not None:
            self._checkpoint.set(0.0)
            self._checkpoint = None
        if point.kind == "train":
            self._load_checkpoint(point.step)
            return
        at = self._engine_point(point)
        self._rewinder(at.path).set(at.alpha, at.schedule, self.spec.allow_extrapolation)

    def _engine_point(self, point: Point) -> engine.Point:
        """Where `point` is on its path (base and final: on the first path), as engine.Point; not a train point."""
        if point.kind in ("base", "final"):
            return engine.Point(self.path_names[0], point.alpha, Schedule(), self.spec.cayley_scale)
        schedule = Schedule("list", point.layers) if point.kind == "searched" else self.schedule
        return engine.Point(point.path, point.alpha, schedule, self.spec.cayley_scale)

    def _grid(self, path: str | None):
        """The grid installed on `path`'s rewinder (once per session); None where the path cannot grid."""
        from . import grid

        if path is None:
            return None
        if path not in self.grids:
            try:
                self.grids[path] = grid.install(self._rewinder(path))
            except RewindError as exc:
                log.info("%s: evaluated point by point", exc)
                self.grids[path] = None
        return self.grids[path]

    def _stack(self, points: list[Point], per_pass: int | str):
        """The stacked grid (rewind/grid/stacked.py) with room for a pass of `points`, where every path's points
        may share one pass; None where it cannot stack or the copies would not fit (the branches grid then)."""
        from .evaluate.grid_lm import free_bytes
        from .grid import stacked

        size = sum(grouping.path_of(p, self.path_names[0]) is not None for p in points)
        size = size if per_pass == grouping.AUTO else min(size, int(per_pass))
        if size < 2:
            return None
        if "stacked" not in self.grids:
            first = self._rewinder(self.path_names[0])
            try:
                self.grids["stacked"] = stacked.install(self._rewinder, first)
            except RewindError as exc:
                log.info("%s: the branches grid instead", exc)
                self.grids["stacked"] = None
        stack = self.grids["stacked"]
        if stack is None:
            return None
        room = grouping.STACK_SHARE * (free_bytes(self.model.device) + stack.reserved_bytes())
        if size * stack.bytes_per_point() > room:
            return None
        stack.reserve(size)
        return stack

    def _grid_lm(self, split: str):
        from .evaluate import grid_lm

        if split not in self.grid_lms:
            self.grid_lms[split] = grid_lm.GridLM(self.model, self.tokenizer, self.evaluators[split].lm.batch_size)
        return self.grid_lms[split]

    def _load_checkpoint(self, step: int) -> None:
        directory = self.spec.checkpoint_steps()[step]
        natural = self._rewinder(self.path_names[0])
        update = adapters.read(directory, engine.ModelTensors(self.model, natural.w0))
        natural.set(0.0)
        self._checkpoint = engine.Rewinder(self.model, update, "auto", self.spec.cayley_scale, w0=natural.w0)
        self._checkpoint.set(1.0)
