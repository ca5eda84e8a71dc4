"""Seconds to move a resident model to a new alpha, against merging and reloading a checkpoint per point.

    python bench/alpha_switch.py [--base smollm2 | --shape qwen] [--device cuda] [--methods lora,oft] [--out FILE]
    python bench/alpha_switch.py --shape smollm2,llama1b,qwen --targets all-linear --targets q_proj,v_proj \
        --methods lora16 --reload-reps 0                 # the scaling grid: model size x adapted modules

Adapters are random (LoRA r8 / r16 and OFT b32, on all linear layers or on --targets): timing does not depend on
the values. `--shape` builds an architecture (a recipe preset's, or a bench-local one such as llama1b: see
bench/_shapes.py) with random bf16 weights instead of loading it, so a 7B-shaped model needs no download; the
old-way reload then saves and loads that random model. A comma list of shapes and repeated --targets run as a
grid, one model build per shape. One JSON line per (shape, targets, method, path) on stdout (and appended to --out).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import _shapes  # bench-local: the script's own directory is first on sys.path
import torch
from peft import get_peft_model

from rewind import engine, models
from rewind.paths import fused


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_adapter(base, method: str, out: Path, targets: str = _shapes.ALL_LINEAR) -> Path:
    peft_model = get_peft_model(base, _shapes.adapter_config(method, targets))
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

    if shape is None:
        return (
            AutoModelForCausalLM.from_pretrained(models.resolve(base_id), dtype=models.torch_dtype(dtype))
            .to(device)
            .eval()
        )
    return _shapes.build(shape, device, models.torch_dtype(dtype))


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
    parser.add_argument(
        "--shape",
        default=None,
        help="random weights in this architecture (smollm2, llama1b, llama, qwen); a comma list runs each",
    )
    parser.add_argument(
        "--targets",
        action="append",
        default=None,
        help="adapted modules: all-linear (default) or a comma list (q_proj,v_proj); repeat for a grid",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--methods", default="lora,oft")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--reload-reps", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = models.pick_device(args.device)
    where = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"
    )
    bandwidth = copy_bandwidth(device) if device.startswith("cuda") else None
    shapes = args.shape.split(",") if args.shape else [None]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            start = time.perf_counter()
            model = load(args.base, shape, device, args.dtype)
            sync(device)
            build_s = time.perf_counter() - start
            params = sum(p.numel() for p in model.parameters())
            for targets in args.targets or [_shapes.ALL_LINEAR]:
                for method in args.methods.split(","):
                    label = _shapes.targets_label(targets)
                    adapter = random_adapter(model, method, Path(tmp) / f"{shape}-{method}-{label}", targets)
                    for path in ["cayley", "dense"] if method == "oft" else ["linear"]:
                        rw = engine.attach(model, adapter, path=path)
                        switch = time_switches(rw, args.reps, device)
                        moved = sum(w.numel() * w.element_size() for w in rw.w0.values())
                        record = {
                            "bench": "alpha_switch",
                            "base": shape or args.base,
                            "weights": "random" if shape else "real",
                            "method": method,
                            "path": path,
                            "targets": label,
                            "params": params,
                            "build_s": build_s,
                            "device": where,
                            "dtype": args.dtype,
                            "tensors": len(rw.w0),
                            # which kernels wrote W (rewind/paths/fused.py): Triton on CUDA unless disabled
                            "writes": "triton" if device.startswith("cuda") and fused.available() else "torch",
                            "adapted_bytes": moved,
                            "switch_s_median": statistics.median(switch),
                            "switch_s_min": min(switch),
                            "reps": args.reps,
                            "torch": torch.__version__,
                            "copy_bytes_per_s": bandwidth,
                            # reading W0 and writing W: the least any in-place switch must move
                            "copy_bound_s": 2 * moved / bandwidth if bandwidth else None,
                        }
                        restore(model, rw)
                        if path in ("linear", "cayley") and args.reload_reps:
                            reload = time_reload(args.base, shape, adapter, device, args.dtype, args.reload_reps)
                            record["reload_s_median"] = statistics.median(reload)
                            record["speedup"] = record["reload_s_median"] / record["switch_s_median"]
                        records.append(record)
                        line = json.dumps(record)
                        print(line, flush=True)
                        if args.out:
                            with open(args.out, "a") as f:
                                f.write(line + "\n")
                        del rw
            del model
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    table(records)


def table(records: list[dict]) -> None:
    print(
        "| shape | params | targets | method | path | tensors | adapted MB | switch ms (median) | copy bound ms | "
        "switch / bound |\n" + "|" + " --- |" * 10
    )
    for r in records:
        bound = r["copy_bound_s"]  # None off an accelerator
        bound_text = f"{bound * 1e3:.2f} | {r['switch_s_median'] / bound:.1f}" if bound else "– | –"
        print(
            f"| {r['base']} | {r['params'] / 1e9:.2f}B | {r['targets']} | {r['method']} | {r['path']} | "
            f"{r['tensors']} | {r['adapted_bytes'] / 1e6:.0f} | {r['switch_s_median'] * 1e3:.2f} | {bound_text} |"
        )


def restore(model, rw: engine.Rewinder) -> None:
    """Put W0 back exactly, so the next adapter in the grid starts from the same base (no rebuild per adapter)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, w0 in rw.w0.items():
            params[name].copy_(w0)


if __name__ == "__main__":
    main()
