"""Where `rewind export`'s host memory goes: RSS (anonymous / file-backed) at each stage of one merged export.

    python bench/export_profile.py --base DIR --adapter DIR [--alpha 0.7] [--device cpu]

Runs plan + write in this process and snapshots /proc/self/status after the imports, after planning (adapter
read), and inside the shard loop: just before each shard's save_file (the shard's tensors all held) and just after
it. Also reports the bytes held in the shard dict, split into updated tensors (fresh anonymous memory) and
unchanged ones (views of the mmapped input shard), the adapter's in-memory deltas, and the process peak (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def status() -> dict[str, int]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0]) * 1024
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="append the JSON line here")
    args = parser.parse_args()
    stages = [("imported", status())]

    import safetensors.torch
    import torch

    from rewind import export

    stages.append(("imported rewind.export", status()))
    real_save = safetensors.torch.save_file
    held = []

    def save_file(tensors, filename, metadata=None):
        plan_alphas = plan.alphas
        updated = sum(t.numel() * t.element_size() for n, t in tensors.items() if n in plan_alphas)
        unchanged = sum(t.numel() * t.element_size() for n, t in tensors.items() if n not in plan_alphas)
        held.append(
            {
                "shard": Path(filename).name,
                "updated_bytes": updated,
                "unchanged_bytes": unchanged,
                "shard_bytes": updated + unchanged,
            }
        )
        stages.append((f"before save_file {Path(filename).name}", status()))
        real_save(tensors, filename, metadata=metadata)
        stages.append((f"after save_file {Path(filename).name}", status()))

    safetensors.torch.save_file = save_file
    with tempfile.TemporaryDirectory() as tmp:
        spec = export.ExportSpec(adapter=args.adapter, base=args.base, out=Path(tmp) / "out", alpha=args.alpha)
        plan = export.plan(spec)
        deltas = sum(
            t.numel() * t.element_size()
            for d in plan.update.deltas.values()
            for t in vars(d).values()
            if isinstance(t, torch.Tensor)
        )
        stages.append(("planned (adapter read)", status()))
        export.write(plan, args.device)
        stages.append(("written", status()))
    mb = 1e6
    print(f"{'stage':44} {'VmRSS':>8} {'anon':>8} {'file':>8} {'VmHWM':>8}  (MB)")
    for name, s in stages:
        print(
            f"{name:44} {s['VmRSS'] / mb:8.0f} {s['RssAnon'] / mb:8.0f} {s['RssFile'] / mb:8.0f} {s['VmHWM'] / mb:8.0f}"
        )
    for h in held:
        print(
            f"{h['shard']}: held {h['shard_bytes'] / mb:.0f} MB = updated {h['updated_bytes'] / mb:.0f} MB "
            f"+ unchanged {h['unchanged_bytes'] / mb:.0f} MB"
        )
    print(f"adapter deltas in memory: {deltas / mb:.0f} MB")
    record = {
        "bench": "export_profile",
        "base": args.base,
        "device": args.device,
        "stages": dict(stages),
        "held": held,
        "deltas_bytes": deltas,
    }
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
