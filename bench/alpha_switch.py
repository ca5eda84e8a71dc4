"""Seconds to move a resident model to a new alpha, against merging and reloading a checkpoint per point.

    python bench/alpha_switch.py [--base smollm2 | --shape qwen] [--device cuda] [--methods lora,oft] [--out FILE]

Adapters are random (LoRA r8 and OFT b32 on all linear layers): timing does not depend on the values. `--shape
ALIAS` builds the alias's architecture (from its recipe preset) with random bf16 weights instead of loading it, so
a 7B-shaped model needs no download; the old-way reload then saves and loads that random model.
One JSON line per (method, path) on stdout (and appended to --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, OFTConfig, get_peft_model

from rewind import engine, models

CONFIGS = {"lora": LoraConfig(r=8, target_modules="all-linear"),
           "lora16": LoraConfig(r=16, target_modules="all-linear"),
           "oft": OFTConfig(r=0, oft_block_size=32, target_modules="all-linear")}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_adapter(base, method: str, out: Path) -> Path:
    peft_model = get_peft_model(base, CONFIGS[method])
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.01)
    peft_model.save_pretrained(out)
    peft_model.unload()
    return out


def time_switches(rw: engine.Rewinder, reps: int, device: str) -> list[float]:
    rw.set(0.5)  # warm-up: kernels, allocator
    times = []
    for i in range(reps):
        alpha = 0.3 if i % 2 else 0.7
        sync(device)
        start = time.perf_counter()
        rw.set(alpha)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def load(base_id, shape, device: str, dtype: str):
    from transformers import AutoModelForCausalLM

    from rewind.train.budget import model_config

    if shape is None:
        return AutoModelForCausalLM.from_pretrained(models.resolve(base_id), dtype=models.torch_dtype(dtype)).to(
            device).eval()
    with torch.device(device):
        return AutoModelForCausalLM.from_config(model_config(shape), dtype=models.torch_dtype(dtype)).eval()


def copy_bandwidth(device: str, gib: float = 4.0) -> float:
    """Device-to-device copy, bytes read + written per second: the ceiling for rewriting weights in place."""
    src = torch.empty(int(gib * 2**30) // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    sync(device)
    return 5 * 2 * src.numel() * 2 / (time.perf_counter() - start)


def time_reload(base_id, shape, adapter: Path, device: str, dtype: str, reps: int) -> list[float]:
    """The old way per point: load base + adapter, merge_and_unload, save_pretrained, from_pretrained."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    times = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            if shape is not None:  # a random model has no checkpoint: save one first, outside the timing
                load(base_id, shape, device, dtype).save_pretrained(Path(tmp) / "base")
                base_id, shape = str(Path(tmp) / "base"), None
            sync(device)
            start = time.perf_counter()
            model = load(base_id, None, device, dtype)
            merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            merged.save_pretrained(Path(tmp) / "merged")
            AutoModelForCausalLM.from_pretrained(Path(tmp) / "merged", dtype=models.torch_dtype(dtype)).to(device)
            sync(device)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2")
    parser.add_argument("--shape", default=None, help="random weights in this alias's architecture (qwen, smollm2)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--methods", default="lora,oft")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--reload-reps", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = models.pick_device(args.device)
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.processor() or 'cpu'} " \
        f"({torch.get_num_threads()} threads)"
    bandwidth = copy_bandwidth(device) if device.startswith("cuda") else None
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            model = load(args.base, args.shape, device, args.dtype)
            adapter = random_adapter(model, method, Path(tmp) / method)
            for path in (["cayley", "dense"] if method == "oft" else ["linear"]):
                rw = engine.attach(model, adapter, path=path)
                switch = time_switches(rw, args.reps, device)
                moved = sum(w.numel() * w.element_size() for w in rw.w0.values())
                record = {"bench": "alpha_switch", "base": args.shape or args.base,
                          "weights": "random" if args.shape else "real", "method": method, "path": path,
                          "device": where, "dtype": args.dtype, "tensors": len(rw.w0),
                          "adapted_bytes": moved, "switch_s_median": statistics.median(switch),
                          "switch_s_min": min(switch), "reps": args.reps, "torch": torch.__version__,
                          "copy_bytes_per_s": bandwidth,
                          # reading W0 and writing W: the least any in-place switch must move
                          "copy_bound_s": 2 * moved / bandwidth if bandwidth else None}
                rw.set(0.0)
                if path in ("linear", "cayley") and args.reload_reps:
                    reload = time_reload(args.base, args.shape, adapter, device, args.dtype, args.reload_reps)
                    record["reload_s_median"] = statistics.median(reload)
                    record["speedup"] = record["reload_s_median"] / record["switch_s_median"]
                line = json.dumps(record)
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(line + "\n")
            del model, rw
            import gc

            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
