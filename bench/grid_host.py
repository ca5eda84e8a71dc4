"""The host-side cost of grid mode (issue 16), on a CPU proxy where the model's arithmetic is small.

    python bench/grid_host.py --ops [--layers 30] [--batch-size 8] [--batch-points 6] [--steps 32]
    python bench/grid_host.py [--limit 8] [--batch-size 8] [--batch-points 6] [--profile FILE]

- --ops: per decoding step of a greedy HF generate on a random 30-layer Llama of hidden 64 and vocab 128 with OFT
  on all its linear modules: aten ops (as the dispatcher sees them; and those that are not views) and host
  milliseconds, one merged point of --batch-size rows against a grid of --batch-points points, with lm-eval's
  stop-string criteria or rewind's (ops_part). The counts are the real model's; the arithmetic is nothing.
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
import cProfile
import functools
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch
from lm_eval.models.utils_hf import stop_sequences_criteria
from peft import OFTConfig
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import tinysweep
from tiny import ADAPTERS, make_adapter, tiny_base

from rewind import engine, models, sweep
from rewind.evaluate import stops
from rewind.grid import install

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


def per_step(model, ids: torch.Tensor, steps: int, stops=None) -> dict:
    """aten ops and host milliseconds per decoding step: a greedy generate of steps + 1 new tokens less one of 1.
    `stops(prompt_length, rows)`: the stop-string criteria the generation checks every step."""

    def generate(new):
        options = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
        if stops is not None:
            options["stopping_criteria"] = stops(ids.shape[1], ids.shape[0])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
        assert out.shape[1] == ids.shape[1] + new, "a stop string ended the generation early"

    counts, seconds = [], []
    for new in (1, steps + 1):
        with OpCounter() as counter:
            generate(new)
        counts.append(counter)
        best = float("inf")  # the fastest of 5: other jobs on a shared CPU only ever add time
        for _ in range(5):
            start = time.perf_counter()
            generate(new)
            best = min(best, time.perf_counter() - start)
        seconds.append(best)
    return {
        "ops": (counts[1].ops - counts[0].ops) / steps,
        "kernels": (counts[1].kernels - counts[0].kernels) / steps,
        "ms": round(1000 * (seconds[1] - seconds[0]) / steps, 3),
    }


@torch.no_grad()
def ops_part(work: Path, args) -> list[dict]:
    """Per decoding step on a random --layers-layer Llama of hidden 64 and vocab 128 (tests/tiny.py) with OFT b16 on
    all seven linear modules of every layer, as the demo adapter on SmolLM2's 30 layers: the ops are the real
    model's, the arithmetic is nothing, so the milliseconds are host work. The math tasks' 4 stop strings, checked
    by lm-eval's criteria (as point by point runs) or by rewind's (evaluate/stops.py); "grid_rows" is the merged
    model at the grid's rows, without branches."""
    ADAPTERS["oft-all"] = (OFTConfig(r=0, oft_block_size=16, target_modules=ALL_LINEAR), 0.05)
    model = tiny_base(layers=args.layers)
    make_adapter("oft-all", model, work / "oft")
    tokenizer = AutoTokenizer.from_pretrained(models.embedded_dir())
    lm_eval_stops = functools.partial(stop_sequences_criteria, tokenizer, STOPS)
    rewind_stops = functools.partial(stops.criteria, tokenizer, STOPS)
    ids = torch.randint(3, 128, (args.batch_size, 32), generator=torch.Generator().manual_seed(0))
    points = [i / (args.batch_points - 1) for i in range(args.batch_points)]
    wide = ids.repeat(len(points), 1)
    out = []
    for path in ("cayley", "dense"):
        rw = engine.attach(model, str(work / "oft"), path=path)
        rw.set(0.5)
        record = {"part": "ops", "path": path, "layers": args.layers, "rows": args.batch_size, "points": len(points)}
        record["merged"] = per_step(model, ids, args.steps, lm_eval_stops)
        record["grid_rows"] = per_step(model, wide, args.steps, rewind_stops)
        grid = install(rw)
        with grid.at(points, rows=args.batch_size):
            record["grid_lm_eval_stops"] = per_step(model, wide, args.steps, lm_eval_stops)
            record["grid"] = per_step(model, wide, args.steps, rewind_stops)
        grid.remove()
        rw.set(0.0)  # the next path binds to the base
        out.append(record)
    return out


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
    parser.add_argument("--ops", action="store_true", help="count ops per decoding step instead of a sweep")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the proxy measures host work: one core, as the GPU run's one busy core
    with tempfile.TemporaryDirectory() as tmp:
        records = ops_part(Path(tmp), args) if args.ops else [sweep_part(Path(tmp), args)]
    for record in records:
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
