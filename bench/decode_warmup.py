"""Why a decoding step costs more the first time a process meets its batch shape (issue 16's unexplained 2.4x).

    python bench/decode_warmup.py [--shape smollm2] [--attn sdpa,sdpa-nocudnn,eager] [--new-tokens 64] [--out FILE]

On the H200 the base's point-by-point repeat after the grid passes decoded at 87 ms a step, the same repeat later
in a point-by-point sweep at 36 ms, and a process's first point at 93 ms. This times greedy HF generate on a random
model of a shape (bench/_shapes.py), left-padded rows as lm-eval sends them, every row decoding all --new-tokens,
in one process per attention setting, in this order: 32 rows (cold), the same again (warm), 1920 rows (a grid
pass), 32 rows again, 32 rows one prompt token longer (shapes not seen yet). Per pass: ms per step and the
allocator's device allocations (cudaMalloc calls) during it. One JSON line per pass on stdout, appended to --out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import _records
import _shapes
import torch

PASSES = [("cold", 32, 0), ("warm", 32, 0), ("grid", 1920, 0), ("after_grid", 32, 0), ("new_length", 32, 1)]


def batch(rows: int, extra: int, vocab: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of 40..60 tokens (+ extra), left-padded to one length as lm-eval pads them; fixed per row count."""
    g = torch.Generator().manual_seed(rows)
    lengths = torch.randint(40, 61, (rows,), generator=g) + extra
    width = int(lengths.max())
    ids = torch.randint(3, vocab, (rows, width), generator=g)
    mask = (torch.arange(width) >= (width - lengths).unsqueeze(1)).long()
    return (ids * mask).to(device), mask.to(device)


def one_setting(args) -> None:
    if args.attn == "sdpa-nocudnn":
        torch.backends.cuda.enable_cudnn_sdp(False)
    model = _shapes.build(args.shape, "cuda", torch.bfloat16)
    model.config._attn_implementation = "eager" if args.attn == "eager" else "sdpa"
    for name, rows, extra in PASSES:
        ids, mask = batch(rows, extra, model.config.vocab_size, "cuda")
        before = torch.cuda.memory_stats().get("num_device_alloc", 0)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=0,
            )
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        record = {
            "bench": "decode_warmup",
            "shape": args.shape,
            "attn": args.attn,
            "pass": name,
            "rows": rows,
            "new_tokens": args.new_tokens,
            "seconds": round(seconds, 3),
            "ms_per_step": round(1000 * seconds / args.new_tokens, 2),
            "device_allocs": torch.cuda.memory_stats().get("num_device_alloc", 0) - before,
            "gpu": torch.cuda.get_device_name(),
        }
        _records.emit(record, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2")
    parser.add_argument("--attn", default="sdpa,sdpa-nocudnn,eager", help="comma-separated; one process each")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if "," not in args.attn:
        one_setting(args)
        return
    for attn in args.attn.split(","):  # a fresh process each: the warm-up is per process
        command = [sys.executable, str(Path(__file__)), "--shape", args.shape, "--attn", attn]
        command += ["--new-tokens", str(args.new_tokens)] + (["--out", args.out] if args.out else [])
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
