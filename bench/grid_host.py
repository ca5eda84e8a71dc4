"""The host-side cost of grid mode (issue 16), on a CPU proxy where the model's arithmetic is small.

    python bench/grid_host.py --ops [--methods lora,oft] [--layers 30] [--batch-size 8] [--batch-points 6] [--steps 32]
    python bench/grid_host.py [--limit 8] [--batch-size 8] [--batch-points 6] [--profile FILE]

- --ops: per decoding step of a greedy HF generate on a random 30-layer Llama of hidden 64 and vocab 128 with LoRA
  or OFT on all its linear modules: aten ops (as the dispatcher sees them; and those that are not views) and host
  milliseconds, one merged point of --batch-size rows against the grid at that one point and at --batch-points
  points, with lm-eval's stop-string criteria or rewind's (ops_part), and microseconds per call of one branched
  Linear (call_us). The counts are the real model's; the arithmetic is nothing.
- sweep: seconds of a whole Sweep.run, grid mode (--batch-points) or point by point (1), on a random 2-layer Llama
  of hidden 64 with SmolLM2's tokenizer (tests/tinysweep.py) and a random OFT adapter (tests/tiny.py), swept as
  the H200 run swept the demo adapter: cayley and dense, alphas 0.2..0.8, the math-300 generation tasks
  (bench/tasks/math300) and general_offline_squad. A random model rarely meets a stop string, so every batch
  decodes all 128 tokens. SmolLM2's 49k-token LM head is most of its arithmetic. --profile writes cProfile's
  stats of the sweep to FILE and prints the first --top entries.
One JSON line per part on stdout. Numbers and how to read them: bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch
from lm_eval.models.utils_hf import stop_sequences_criteria
from peft import LoraConfig, OFTConfig
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import tinysweep
from tiny import ADAPTERS, make_adapter, tiny_base

from rewind import engine, models, sweep
from rewind.evaluate import stops
from rewind.grid import install, stacked

TASKS = Path(__file__).resolve().parent / "tasks" / "math300"
STOPS = ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"]  # the math tasks' until
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class OpCounter(TorchDispatchMode):
    """aten ops as the dispatcher sees them; `kernels` leaves out views (no kernel launch on a GPU)."""

    def __init__(self):
        super().__init__()
        self.ops, self.kernels = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.kernels += not func.is_view
        return func(*args, **(kwargs or {}))


def generate(model, ids: torch.Tensor, new: int, stops=None) -> None:
    """A greedy generate of exactly `new` tokens. `stops(prompt_length, rows)`: the stop-string criteria the
    generation checks every step."""
    options = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    if stops is not None:
        options["stopping_criteria"] = stops(ids.shape[1], ids.shape[0])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
    assert out.shape[1] == ids.shape[1] + new, "a stop string ended the generation early"


def ops_per_step(model, ids: torch.Tensor, steps: int, stops=None) -> dict:
    """aten ops per decoding step: those of a generate of steps + 1 new tokens less those of one of 1, after a
    generate that warms what branches make once per set of points (their per-row views)."""
    generate(model, ids, 1, stops)
    counts = []
    for new in (1, steps + 1):
        with OpCounter() as counter:
            generate(model, ids, new, stops)
        counts.append(counter)
    return {
        "ops": (counts[1].ops - counts[0].ops) / steps,
        "kernels": (counts[1].kernels - counts[0].kernels) / steps,
    }


def clock(model, ids: torch.Tensor, steps: int, stops=None) -> tuple[float, float, float, float]:
    """Wall and process-CPU seconds of a generate of 1 new token and of steps + 1."""
    out = []
    for new in (1, steps + 1):
        start, cpu = time.perf_counter(), time.process_time()
        generate(model, ids, new, stops)
        out += [time.perf_counter() - start, time.process_time() - cpu]
    return tuple(out)


def call_us(module: torch.nn.Module, rows: int, calls: int = 1000) -> float:
    """Microseconds per call of one Linear on a decoding step's input (rows x 1 token): with the grid's points set,
    its branch's own host cost, without the rest of the model's step around it; the best of 3 loops."""
    x = torch.randn(rows, 1, module.in_features, generator=torch.Generator().manual_seed(0))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            module(x)
        best = min(best, time.perf_counter() - start)
    return 1e6 * best / calls


# --ops runs: (adapter, path). LoRA r8 and OFT b16 on every linear module, as the demo adapters on SmolLM2.
OPS_RUNS = {"lora": ["linear"], "oft": ["cayley", "dense"]}


def ops_parts(ids: torch.Tensor, args, lm_eval_stops, rewind_stops) -> dict:
    """name -> (rows, stops, grid kind: None (the model merged at 0.5), "branches" or "stacked", points, rows)."""
    points = [i / (args.batch_points - 1) for i in range(args.batch_points)]
    wide = ids.repeat(len(points), 1)
    mixed = torch.arange(len(points)).repeat(args.batch_size)  # row i at point i mod points: no two rows adjacent
    return {
        "merged": (ids, lm_eval_stops, None, None, None),
        "merged_rewind_stops": (ids, rewind_stops, None, None, None),
        "grid_rows": (wide, rewind_stops, None, None, None),
        "one_point": (ids, rewind_stops, "branches", [0.5], args.batch_size),
        "grid_lm_eval_stops": (wide, lm_eval_stops, "branches", points, args.batch_size),
        "grid": (wide, rewind_stops, "branches", points, args.batch_size),
        "grid_mixed": (wide, rewind_stops, "branches", points, mixed),
        "stacked_one_point": (ids, rewind_stops, "stacked", [0.5], args.batch_size),
        "stacked": (wide, rewind_stops, "stacked", points, args.batch_size),
    }


def measure_parts(rw: engine.Rewinder, parts: dict, args) -> dict:
    """Ops per step of every part, then host milliseconds per step timed in turns: each round runs every part once
    (the merged ones, then each kind of grid installed), so that other jobs' load falls on all parts alike; the best
    round of --reps for each, wall and process CPU, and the best microseconds per call of layer 0's q_proj."""
    record, times = {}, {name: [] for name in parts}
    grids = {None: lambda: None, "branches": lambda: install(rw), "stacked": lambda: stacked.install(lambda _: rw, rw)}
    for round_ in range(args.reps + 1):  # round 0: ops counted, caches and allocator warmed
        rw.set(0.5)
        for kind, installed in grids.items():
            grid = installed()
            for name, (ids, stops_, at_kind, points, rows) in parts.items():
                if at_kind != kind:
                    continue
                if kind == "stacked":
                    points = [engine.Point(rw.path_name, a) for a in points]
                with grid.at(points, rows) if grid else contextlib.nullcontext():
                    if round_ == 0:
                        record[name] = ops_per_step(rw.model, ids, args.steps, stops_)
                    else:
                        call = call_us(rw.model.model.layers[0].self_attn.q_proj, len(ids))
                        times[name].append((*clock(rw.model, ids, args.steps, stops_), call))
            if grid:
                grid.remove()  # the rewinder is at its base again
    for name, runs in times.items():
        best = [min(run[i] for run in runs) for i in range(4)]  # other jobs only ever add time
        record[name]["ms"] = round(1000 * (best[2] - best[0]) / args.steps, 3)
        record[name]["cpu_ms"] = round(1000 * (best[3] - best[1]) / args.steps, 3)
        record[name]["q_proj_us"] = round(min(run[4] for run in runs), 2)
    return record


@torch.no_grad()
def ops_part(work: Path, args) -> None:
    """Per decoding step on a random --layers-layer Llama of hidden 64 and vocab 128 (tests/tiny.py) with LoRA r8
    or OFT b16 on all seven linear modules of every layer, as the demo adapters on SmolLM2's 30 layers: the ops are
    the real model's, the arithmetic is nothing, so the milliseconds are host work. The math tasks' 4 stop strings,
    checked by lm-eval's criteria (as point by point runs) or by rewind's (evaluate/stops.py). Parts: "merged" (one
    point merged, lm-eval's stops) and "merged_rewind_stops"; "one_point" (the grid at one point, the same rows:
    the branches' own cost against merged_rewind_stops); "grid_rows" (the merged model at the grid's rows, without
    branches); "grid" (--batch-points points, rows blocked by point) and "grid_mixed" (the same rows interleaved,
    the branches' general case); "stacked_one_point" and "stacked" (rewind/grid/stacked.py: each point's own
    weights, as "one_point" and "grid"). Prints one JSON line per run."""
    ADAPTERS["oft-all"] = (OFTConfig(r=0, oft_block_size=16, target_modules=ALL_LINEAR), 0.05)
    ADAPTERS["lora-all"] = (LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR), 0.1)
    model = tiny_base(layers=args.layers)
    tokenizer = AutoTokenizer.from_pretrained(models.embedded_dir())
    lm_eval_stops = functools.partial(stop_sequences_criteria, tokenizer, STOPS)
    rewind_stops = functools.partial(stops.criteria, tokenizer, STOPS)
    ids = torch.randint(3, 128, (args.batch_size, 32), generator=torch.Generator().manual_seed(0))
    parts = ops_parts(ids, args, lm_eval_stops, rewind_stops)
    for method in args.methods.split(","):
        make_adapter(f"{method}-all", model, work / method)
        for path in OPS_RUNS[method]:
            rw = engine.attach(model, str(work / method), path=path)
            record = {"part": "ops", "method": method, "path": path, "layers": args.layers}
            record.update(rows=args.batch_size, points=args.batch_points, steps=args.steps, reps=args.reps)
            record.update(measure_parts(rw, parts, args))
            record.update(load=round(os.getloadavg()[0], 2), date=time.strftime("%Y-%m-%d"))
            print(json.dumps(record), flush=True)
            rw.set(0.0)  # the next path binds to the base


def sweep_part(work: Path, args) -> dict:
    base = tinysweep.chat_base(work / "base")
    base.generation_config.max_new_tokens = None  # the tasks' max_gen_toks decides, as for a real base
    base.save_pretrained(work / "base")
    make_adapter("oft", base, work / "oft")
    spec = sweep.SweepSpec(
        adapter=str(work / "oft"),
        base=str(work / "base"),
        paths=["cayley", "dense"],
        alphas=[0.2, 0.4, 0.6, 0.8],
        target=["math-300"],
        general=["general_offline_squad"],
        include_path=[str(TASKS)],
        limit=args.limit,
        device="cpu",
        dtype="fp32",
        batch_size=args.batch_size,
        batch_points=args.batch_points,
    )
    profiler = cProfile.Profile() if args.profile else None
    start, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    sweep.Sweep(spec, work / "sweep").run(progress=False)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(args.top)
    return {
        "part": "sweep",
        "wall_s": round(time.perf_counter() - start, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        **{k: getattr(args, k) for k in ("limit", "batch_size", "batch_points")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8, help="items per task and split")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="lm-eval batch size (items per pass); --ops: rows per point"
    )
    parser.add_argument("--batch-points", type=int, default=6, help="points per grid pass; 1: point by point")
    parser.add_argument("--profile", default=None, help="write the sweep's cProfile stats here")
    parser.add_argument("--top", type=int, default=25, help="entries of the profile printed to stderr")
    parser.add_argument("--layers", type=int, default=30, help="--ops: layers of the model (SmolLM2: 30)")
    parser.add_argument("--steps", type=int, default=32, help="--ops: decoding steps counted")
    parser.add_argument("--reps", type=int, default=5, help="--ops: timed rounds (the best is kept)")
    parser.add_argument("--ops", action="store_true", help="count ops per decoding step instead of a sweep")
    parser.add_argument("--methods", default="lora,oft", help="--ops: adapters (lora: linear; oft: cayley, dense)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the proxy measures host work: one core, as the GPU run's one busy core
    with tempfile.TemporaryDirectory() as tmp:
        if args.ops:
            ops_part(Path(tmp), args)  # prints each record as it is measured
        else:
            print(json.dumps(sweep_part(Path(tmp), args)), flush=True)


if __name__ == "__main__":
    main()
