"""Seconds to move a resident model to a new alpha, against merging and reloading a checkpoint per point.

    python bench/alpha_switch.py [--base smollm2] [--device cuda] [--methods lora,oft] [--reps 10] [--out FILE]

Adapters are random (LoRA r8 and OFT b32 on all linear layers): timing does not depend on the values.
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


def time_reload(base_id, adapter: Path, device: str, dtype: str, reps: int) -> list[float]:
    """The old way per point: load base + adapter, merge_and_unload, save_pretrained, from_pretrained."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    times = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            sync(device)
            start = time.perf_counter()
            model, _ = models.load_base(base_id, device, dtype)
            merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            merged.save_pretrained(tmp)
            AutoModelForCausalLM.from_pretrained(tmp, dtype=models.torch_dtype(dtype)).to(device)
            sync(device)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2")
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
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            model, _ = models.load_base(args.base, device, args.dtype)
            adapter = random_adapter(model, method, Path(tmp) / method)
            for path in (["cayley", "dense"] if method == "oft" else ["linear"]):
                rw = engine.attach(model, adapter, path=path)
                switch = time_switches(rw, args.reps, device)
                moved = sum(w.numel() * w.element_size() for w in rw.w0.values())
                record = {"bench": "alpha_switch", "base": args.base, "method": method, "path": path,
                          "device": where, "dtype": args.dtype, "tensors": len(rw.w0),
                          "adapted_bytes": moved, "switch_s_median": statistics.median(switch),
                          "switch_s_min": min(switch), "reps": args.reps, "torch": torch.__version__}
                rw.set(0.0)
                if path in ("linear", "cayley") and args.reload_reps:
                    reload = time_reload(args.base, adapter, device, args.dtype, args.reload_reps)
                    record["reload_s_median"] = statistics.median(reload)
                    record["speedup"] = record["reload_s_median"] / record["switch_s_median"]
                line = json.dumps(record)
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(line + "\n")
            del model, rw
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
