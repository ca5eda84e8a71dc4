"""Seconds for N points of one path: one grid pass (each row at its point) against N merged passes (switch + pass).

    python bench/grid_forward.py [--shape llama-small] [--methods lora,oft] [--points 11] [--batch 4] \
        [--tokens 64] [--new-tokens 16] [--device cpu] [--dtype fp32] [--reps 3] [--out FILE]

Random model of a shape (bench/_shapes.py) and random adapters (LoRA r8 on the linear path, OFT b32 on its cayley
path and on dense), all linear layers. Two kinds of pass: `forward`, one forward of batch x tokens (what
loglikelihood requests cost), and `generate`, greedy decoding of --new-tokens after a --tokens prompt with the KV
cache (what generation requests cost). "merged" = for each point, Rewinder.set(alpha) and a pass of --batch rows;
"grid" = one `grid.at(points)` (its preparation included) and one pass of points x batch rows. "one point" compares
a single point both ways at --batch rows: the cost of the unmerged branches themselves. One JSON line per
(method, path, kind) on stdout, appended to --out: medians of --reps, wall and process-CPU seconds, and the
1-minute load average at the end (other jobs on a shared CPU stretch the wall clock).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _records  # these two are bench-local: the script's own directory is first on sys.path
import _shapes
import torch
from alpha_switch import random_adapter, sync

from rewind import engine, models
from rewind.grid import install

RUNS = {"lora": ["linear"], "oft": ["cayley", "dense"]}


def timed(fn, device: str, reps: int, warmup=None) -> tuple[float, float]:
    """Median wall and process-CPU seconds. On a shared CPU the process time is the steadier of the two: other
    jobs stretch the wall clock, not the work this process does. `warmup` runs first (default: `fn` itself)."""
    (warmup or fn)()
    wall, cpu = [], []
    for _ in range(reps):
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def make_pass(model, kind: str, new_tokens: int):
    if kind == "forward":
        return lambda ids: model(input_ids=ids).logits
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
    return lambda ids: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)


@torch.no_grad()
def measure(rw: engine.Rewinder, kind: str, args) -> dict:
    run = make_pass(rw.model, kind, args.new_tokens)
    short = make_pass(rw.model, kind, min(args.new_tokens, 2))  # warm-ups: the same shapes, two steps (a 7B pass
    # of 256 new tokens takes seconds; warming up with a whole pass per point doubled the benchmark)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, rw.model.config.vocab_size, (args.batch, args.tokens), generator=gen).to(args.device)
    alphas = [i / max(args.points - 1, 1) for i in range(args.points)]

    def merged(points, pass_=run):
        for a in points:
            rw.set(a)
            pass_(ids)

    times = {"merged": timed(lambda: merged(alphas), args.device, args.reps, lambda: merged(alphas[:2], short))}
    times["one_point_merged"] = timed(lambda: merged([1.0]), args.device, args.reps, lambda: None)
    grid = install(rw)

    def gridded(points, pass_=run):
        with grid.at(points, rows=args.batch):
            pass_(ids.repeat(len(points), 1))

    times["grid"] = timed(lambda: gridded(alphas), args.device, args.reps, lambda: gridded(alphas, short))
    times["one_point_grid"] = timed(lambda: gridded([1.0]), args.device, args.reps, lambda: gridded([1.0], short))
    if args.profile and kind == "generate":
        profile("one point merged", lambda: merged([1.0], short), args.device)
        profile("one point grid", lambda: gridded([1.0], short), args.device)
    grid.remove()
    record = {}
    for clock, i in (("wall", 0), ("cpu", 1)):
        record.update({f"{name}_{clock}_s": round(t[i], 4) for name, t in times.items()})
        record[f"speedup_{clock}"] = round(times["merged"][i] / times["grid"][i], 3)
        record[f"one_point_overhead_{clock}"] = round(times["one_point_grid"][i] / times["one_point_merged"][i], 3)
    return record


def profile(name: str, fn, device: str) -> None:
    """Where one pass's time goes (torch.profiler; stderr): busy GPU time against the wall clock tells a host-bound
    pass (the GPU waits for launches) from a device-bound one."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sync(device)
    start = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        fn()
        sync(device)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events) / 1e6
    print(f"profile {name}: wall {wall:.3f} s (profiled), device busy {busy:.3f} s", file=sys.stderr)
    print(events.table(sort_by="self_cpu_time_total", row_limit=12), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-small")
    parser.add_argument("--methods", default="lora,oft")
    parser.add_argument("--kinds", default="forward,generate")
    parser.add_argument("--points", type=int, default=11)
    parser.add_argument("--batch", type=int, default=4, help="rows per point")
    parser.add_argument("--tokens", type=int, default=64, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--profile", action="store_true", help="profile one point of a short pass, both ways")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _shapes.build(args.shape, args.device, models.torch_dtype(args.dtype))
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            adapter = random_adapter(model, method, Path(tmp) / method)
            for path in RUNS[method]:
                rw = engine.attach(model, adapter, path=path)
                for kind in args.kinds.split(","):
                    record = {
                        "shape": args.shape,
                        "method": method,
                        "path": path,
                        "kind": kind,
                        **{k: getattr(args, k) for k in ("points", "batch", "tokens", "dtype", "device")},
                        "new_tokens": args.new_tokens if kind == "generate" else 0,
                        **measure(rw, kind, args),
                        "threads": torch.get_num_threads(),
                        "load": round(os.getloadavg()[0], 2),
                    }
                    _records.emit(record, args.out)
                rw.set(0.0)  # the next adapter binds to the base


if __name__ == "__main__":
    main()
