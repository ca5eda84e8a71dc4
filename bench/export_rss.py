"""Peak host RSS and wall time of `rewind export` against peft's merge_and_unload + save_pretrained (issue 6, P3).

    python bench/export_rss.py --shape smollm2|llama1b|qwen [--methods lora16,oft] [--targets all-linear]
        [--devices cpu,cuda] [--max-shard-size 5GB] [--work DIR] [--out FILE]

Builds a random bf16 checkpoint of the shape once (sharded safetensors, written tensor by tensor; see
_shapes.write_checkpoint) and a random adapter per method, then runs each export in a fresh Python process and
takes that process's peak RSS (its VmHWM at exit via _peak.py: the kernel's high-water mark, file-backed pages such
as mmapped shards included), sampling /proc/PID/status meanwhile for the anonymous / file-backed split. Ways:
- rewind: `python -m rewind.cli -v export --base B --adapter A --alpha 0.7 --out O --device D` (-v: its line
          "export profile: {...}", the seconds each stage was busy, becomes the record's `profile`)
- old:    peft: from_pretrained, PeftModel.from_pretrained, merge_and_unload, save_pretrained (same shard size);
          LoRA scaled to the same alpha, OFT merged at alpha 1 (peft has no OFT alpha; the cost is the same)
Baselines, measured the same way: an idle `python -c 'import torch, rewind'` (all rewind export imports besides
click and safetensors), one adding peft + transformers (the old way's imports) and on cuda one that also starts
CUDA, so peak RSS can be read net of the interpreter and libraries. Target (issue 6): peak RSS <= 1.3 x (largest
shard + adapter). The disk's bound (issue 19): a plain copy of the base's shards on the same disk (and reading
alone, writing alone), each export's wall time over it ("net": less the idle baseline's wall, i.e. the imports),
and rewind's wall time over the old way's; targets: <= 1.5x the copy, <= 0.5x the old way. One JSON line per
measurement on stdout (and appended to --out), then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.3
_STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
PROFILE = "export profile: "


class Sampler(threading.Thread):
    """Polls /proc/PID/status: peak of each RSS part, and the parts at the moment VmRSS peaked."""

    def __init__(self, pid: int, interval: float = 0.01, trace: bool = False):
        super().__init__(daemon=True)
        self.pid, self.interval, self.keep_trace = pid, interval, trace
        self.peak = dict.fromkeys(_STATUS_FIELDS, 0)
        self.at_peak: dict[str, int] = {}
        self.trace: list[tuple[float, dict]] = []
        self.stop = threading.Event()

    def read(self) -> dict[str, int] | None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        values = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in _STATUS_FIELDS:
                values[key] = int(rest.split()[0]) * 1024
        return values or None

    def run(self) -> None:
        start = time.perf_counter()
        while not self.stop.is_set():
            values = self.read()
            if values is None:
                return
            if values.get("VmRSS", 0) > self.peak["VmRSS"]:
                self.at_peak = dict(values)
            for key, value in values.items():
                self.peak[key] = max(self.peak[key], value)
            if self.keep_trace:
                self.trace.append((time.perf_counter() - start, values))
            time.sleep(self.interval)


def child_env(root: Path = ROOT) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def measure(args: list[str], interval: float = 0.01, trace: Path | None = None, root: Path = ROOT) -> dict:
    """Run `python ARGS` in a fresh process (under _peak.py); wall time, its own peak RSS and the sampled split.

    Peak RSS is the child's VmHWM at exit (see _peak.py for why not ru_maxrss); the sampler's split (anonymous /
    file-backed) is the one seen when VmRSS peaked, at `interval` resolution."""
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        cmd = [sys.executable, str(Path(__file__).resolve().parent / "_peak.py"), report.name, *args]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=child_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = Sampler(proc.pid, interval, trace is not None)
        sampler.start()
        output = proc.stdout.read()
        proc.wait()
        wall = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-3000:]}")
        text = Path(report.name).read_text()
    own = json.loads(text) if text else {}
    if trace is not None:
        trace.write_text("\n".join(json.dumps({"t": t, **v}) for t, v in sampler.trace) + "\n")
    return {
        "wall_s": wall,
        "profile": _profile(output),
        "peak_rss_bytes": own.get("VmHWM") or sampler.peak["VmRSS"],
        "peak_from": "VmHWM" if own.get("VmHWM") else "sampled",
        "sampled_peak": sampler.peak,
        "sampled_at_peak": sampler.at_peak,
    }


def _profile(output: str) -> dict | None:
    """The `export profile: {...}` line `rewind -v export` prints (None for other commands)."""
    for line in output.splitlines():
        if line.startswith(PROFILE):
            return json.loads(line.removeprefix(PROFILE))
    return None


def disk_bound(shards: list[Path], work: Path, chunk: int = 64 << 20) -> dict:
    """The disk's bound on an export of these shards, on this machine: a plain copy of them (read a chunk, write
    it; no reflink, no copy_file_range), and reading alone and writing alone for the two rates. The base was just
    written or used, so its pages are as cached as they are for the exports measured after."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    total = sum(s.stat().st_size for s in shards)
    dest = work / "copy-of-base"
    dest.mkdir(exist_ok=True)
    try:
        start = time.perf_counter()
        for shard in shards:
            with open(shard, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        for shard in shards:
            with open(shard, "rb", buffering=0) as f, open(dest / shard.name, "wb", buffering=0) as g:
                while n := f.readinto(buf):
                    g.write(view[:n])
        copy_s = time.perf_counter() - start
        for shard in shards:
            (dest / shard.name).unlink()
        start = time.perf_counter()
        for shard in shards:
            with open(dest / shard.name, "wb", buffering=0) as g:
                for offset in range(0, shard.stat().st_size, chunk):
                    g.write(view[: min(chunk, shard.stat().st_size - offset)])
        write_s = time.perf_counter() - start
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return {
        "copy_bytes": total,
        "copy_s": copy_s,
        "read_s": read_s,
        "write_s": write_s,
        "read_gb_s": total / read_s / 1e9,
        "write_gb_s": total / write_s / 1e9,
    }


def old_way(base: str, adapter: str, out: str, device: str, alpha: float, max_shard_size: str) -> None:
    """peft's way, in the child process: load, merge_and_unload, save_pretrained."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs = {"device_map": device} if device != "cpu" else {}
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, **kwargs)
    model = PeftModel.from_pretrained(model, adapter)
    for module in model.modules():  # LoRA at alpha: scale every adapter's scaling (OFT has none: merged at 1)
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict):
            for key in scaling:
                scaling[key] *= alpha
    merged = model.merge_and_unload()
    merged.save_pretrained(out, max_shard_size=max_shard_size)


BASELINES = {
    "import": "import torch, rewind",
    # what the old way imports before it loads anything (rewind export imports only torch + safetensors)
    "import+hf": "import torch, rewind, peft, transformers.modeling_utils",
    "import+cuda": "import torch, rewind; torch.zeros(1, device='cuda'); torch.cuda.synchronize()",
}


def versions() -> dict:
    import peft
    import safetensors
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
    }


def commit(root: Path) -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, THP {thp()}"


def thp() -> str:
    """The kernel's transparent huge pages mode (always, madvise, never): `rewind export` asks for them (madvise),
    which changes nothing under always or never."""
    try:
        modes = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().split()
    except OSError:
        return "unknown"
    return next((m.strip("[]") for m in modes if m.startswith("[")), "unknown")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2", help="smollm2, llama1b, llama, qwen (see bench/_shapes.py)")
    parser.add_argument("--methods", default="lora16", help="comma list of lora, lora16, oft")
    parser.add_argument(
        "--targets",
        action="append",
        default=None,
        help="adapted modules: all-linear (default) or a comma list (q_proj,v_proj); repeat for more",
    )
    parser.add_argument("--devices", default=None, help="comma list; default cpu, plus cuda when present")
    parser.add_argument("--ways", default="rewind,old", help="rewind, old or both")
    parser.add_argument(
        "--runs", default=None, help="way:device pairs instead of ways x devices, e.g. rewind:cpu,rewind:cuda,old:cpu"
    )
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--max-shard-size", default="5GB", help="shard size of the random base (and the old way's)")
    parser.add_argument(
        "--work",
        default=None,
        help="dir for the base, adapters and outputs (default: a temp dir; needs ~2x the model's size free)",
    )
    parser.add_argument("--keep", action="store_true", help="keep --work's base and adapters afterwards")
    parser.add_argument("--reps", type=int, default=1, help="runs of each export (one JSON line each)")
    parser.add_argument(
        "--rewind-root",
        default=str(ROOT),
        help="checkout whose rewind the rewind way runs (e.g. another branch's worktree)",
    )
    parser.add_argument("--interval", type=float, default=0.01, help="RSS sampling period, seconds")
    parser.add_argument("--trace", action="store_true", help="write each run's RSS timeline next to --out")
    parser.add_argument("--out", default=None, help="append JSON lines here")
    parser.add_argument(
        "--child", nargs=6, metavar=("BASE", "ADAPTER", "OUT", "DEVICE", "ALPHA", "SHARD"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        base, adapter, out, device, alpha, shard = args.child
        return old_way(base, adapter, out, device, float(alpha), shard)

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _shapes

    cuda = torch.cuda.is_available()
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if cuda else [])
    runs = (
        [tuple(r.split(":")) for r in args.runs.split(",")]
        if args.runs
        else [(way, device) for device in devices for way in args.ways.split(",")]
    )
    devices = list(dict.fromkeys(device for _, device in runs))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="export-rss-"))
    work.mkdir(parents=True, exist_ok=True)
    common = {
        "bench": "export_rss",
        "shape": args.shape,
        "machine": machine(),
        "max_shard_size": args.max_shard_size,
        **versions(),
    }
    records = []
    # `python -m rewind.cli` needs click; a machine without it runs the library call that the CLI makes
    entry = (
        "cli"
        if subprocess.run(
            [sys.executable, "-c", "import rewind.cli"],
            env=child_env(Path(args.rewind_root).resolve()),
            capture_output=True,
        ).returncode
        == 0
        else "library"
    )

    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        records.append(record)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")

    try:
        base = work / f"base-{args.shape}-{args.max_shard_size}"
        if (base / "config.json").is_file():
            from rewind import checkpoint

            shards = {s.name: s.stat().st_size for s in checkpoint.shards(base)}
            created = {"shards": shards, "bytes": sum(shards.values()), "create_s": None, "reused": True}
        else:
            created = _shapes.write_checkpoint(args.shape, base, args.max_shard_size, device="cuda" if cuda else "cpu")
        largest = max(created["shards"].values())
        emit(
            {
                **common,
                "kind": "create",
                "device": "cuda" if cuda and not created.get("reused") else "cpu",
                "shards": len(created["shards"]),
                "largest_shard_bytes": largest,
                "base_bytes": created["bytes"],
                "params": created.get("params"),
                "create_s": created["create_s"],
            }
        )
        from rewind import checkpoint

        disk = disk_bound(checkpoint.shards(base), work)
        emit({**common, "kind": "disk", **disk})
        baselines, baseline_walls = {}, {}
        olds = any(way == "old" for way, _ in runs)
        for name in ["import"] + (["import+hf"] if olds else []) + (["import+cuda"] if "cuda" in devices else []):
            m = measure(["-c", BASELINES[name]], args.interval)
            baselines[name], baseline_walls[name] = m["peak_rss_bytes"], m["wall_s"]
            emit({**common, "kind": "baseline", "baseline": name, "code": BASELINES[name], **m})
        for method, targets in [(m, t) for m in args.methods.split(",") for t in args.targets or ["all-linear"]]:
            adapter = work / f"adapter-{method}-{_shapes.targets_label(targets)}"
            made = _shapes.write_adapter(args.shape, method, adapter, targets)
            for (way, device), rep in [(run, r) for run in runs for r in range(args.reps)]:
                # net of what the way imports before it loads anything (on cuda: of a started CUDA context)
                baseline = "import+cuda" if device.startswith("cuda") else "import+hf" if way == "old" else "import"
                out = work / f"out-{way}-{device}"
                shutil.rmtree(out, ignore_errors=True)
                if way == "rewind" and entry == "cli":
                    cmd = [
                        "-m",
                        "rewind.cli",
                        "-v",
                        "export",
                        "--base",
                        str(base),
                        "--adapter",
                        str(adapter),
                        "--alpha",
                        str(args.alpha),
                        "--out",
                        str(out),
                        "--device",
                        device,
                    ]
                elif way == "rewind":  # the same plan + write, without the CLI's imports
                    cmd = [
                        "-c",
                        "import sys; from rewind.export import export; export(sys.argv[1], sys.argv[2], "
                        "sys.argv[3], float(sys.argv[4]), device=sys.argv[5])",
                        str(base),
                        str(adapter),
                        str(out),
                        str(args.alpha),
                        device,
                    ]
                else:
                    cmd = [
                        str(Path(__file__).resolve()),
                        "--child",
                        str(base),
                        str(adapter),
                        str(out),
                        device,
                        str(args.alpha),
                        args.max_shard_size,
                    ]
                label = f"{args.shape}-{method}-{_shapes.targets_label(targets)}-{device}-{way}-{rep}"
                trace = Path(args.out).with_suffix(f".{label}.trace.jsonl") if args.trace and args.out else None
                m = measure(cmd, args.interval, trace, Path(args.rewind_root).resolve())
                written = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
                out_largest = max(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
                shutil.rmtree(out, ignore_errors=True)
                bound = largest + made["adapter_bytes"]
                emit(
                    {
                        **common,
                        "kind": "export",
                        "way": way,
                        "rep": rep,
                        "method": method,
                        "rewind_root": str(Path(args.rewind_root).resolve()) if way == "rewind" else None,
                        "rewind_commit": commit(Path(args.rewind_root)) if way == "rewind" else None,
                        "entry": entry if way == "rewind" else "peft",
                        "targets": _shapes.targets_label(targets),
                        "device": device,
                        "alpha": args.alpha,
                        **m,
                        "largest_shard_bytes": largest,
                        "out_largest_shard_bytes": out_largest,
                        "written_bytes": written,
                        **made,
                        "baseline": baseline,
                        "baseline_rss_bytes": baselines[baseline],
                        "import_rss_bytes": baselines["import"],
                        "ratio": m["peak_rss_bytes"] / bound,
                        "net_ratio": (m["peak_rss_bytes"] - baselines[baseline]) / bound,
                        "target_met": m["peak_rss_bytes"] <= TARGET_RATIO * bound,
                        # the disk's bound (issue 19): the same bytes copied; net = less the idle imports' wall
                        "copy_s": disk["copy_s"],
                        "wall_vs_copy": m["wall_s"] / disk["copy_s"],
                        "net_wall_s": m["wall_s"] - baseline_walls[baseline],
                        "net_wall_vs_copy": (m["wall_s"] - baseline_walls[baseline]) / disk["copy_s"],
                        "net_target_met": m["peak_rss_bytes"] - baselines[baseline] <= TARGET_RATIO * bound,
                    }
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    table(records)


def _vs_old(r: dict, rows: list[dict]) -> str:
    """The rewind row's wall time over the old way's (mean over its reps) for the same export (issue 19: <= 0.5)."""
    same = ("shape", "method", "targets", "device")
    olds = [o["wall_s"] for o in rows if o["way"] == "old" and all(o[k] == r[k] for k in same)]
    return f"{r['wall_s'] / (sum(olds) / len(olds)):.2f}" if r["way"] == "rewind" and olds else "-"


def table(records: list[dict]) -> None:
    gb = 1e9
    rows = [r for r in records if r["kind"] == "export"]
    head = ["shape", "method", "targets", "device", "way", "wall s", "/ old", "/ copy", "net / copy"]
    head += ["peak RSS GB", "net GB", "shard+adapter GB", "ratio", "net ratio", "<=1.3"]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for r in rows:
        bound = r["largest_shard_bytes"] + r["adapter_bytes"]
        print(
            f"| {r['shape']} | {r['method']} | {r['targets']} | {r['device']} | {r['way']} | {r['wall_s']:.1f} | "
            f"{_vs_old(r, rows)} | {r['wall_vs_copy']:.2f} | {r['net_wall_vs_copy']:.2f} | "
            f"{r['peak_rss_bytes'] / gb:.2f} | {(r['peak_rss_bytes'] - r['baseline_rss_bytes']) / gb:.2f} | "
            f"{bound / gb:.2f} | {r['ratio']:.2f} | {r['net_ratio']:.2f} | "
            f"{'yes' if r['target_met'] else 'net only' if r['net_target_met'] else 'no'} |"
        )
    print("targets (issue 19): rewind wall / old <= 0.5, wall / copy <= 1.5, peak RSS <= 1.3 x (shard + adapter)")
    for r in rows:
        if r.get("profile"):
            busy = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in r["profile"].items() if k.endswith("_s"))
            print(f"profile {r['method']} {r['device']} rep {r['rep']} (s, summed over threads): {busy}")
    for r in records:
        if r["kind"] == "disk":
            print(
                f"disk bound: plain copy of the base's {r['copy_bytes'] / gb:.2f} GB: {r['copy_s']:.2f} s (read alone "
                f"{r['read_gb_s']:.2f} GB/s, write alone {r['write_gb_s']:.2f} GB/s)"
            )
        if r["kind"] == "baseline":
            print(f"baseline {r['baseline']}: {r['peak_rss_bytes'] / gb:.2f} GB, {r['wall_s']:.1f} s")
        if r["kind"] == "create":
            made = f"{r['create_s']:.1f} s" if r["create_s"] is not None else "reused"
            print(
                f"base {r['shape']}: {r['base_bytes'] / gb:.2f} GB in {r['shards']} shards (largest "
                f"{r['largest_shard_bytes'] / gb:.2f} GB), created on {r['device']}: {made}"
            )


if __name__ == "__main__":
    main()
