"""A whole sweep in grid mode against point by point (issue 16): seconds, ratio, and per-item agreement.

    python bench/grid_sweep.py --base smollm2 --adapter DIR --path cayley --path dense \
        --target math-offline --general general-offline --limit 256 --device cuda [--out FILE]
    python bench/grid_sweep.py --shape tiny            # CPU smoke test: a tiny random base and OFT adapter

1. The same sweep (same items) twice: `--batch-points auto` and `--batch-points 1`, each timed whole (Sweep.run:
   validation points, then the test split of three); ratio = point-by-point seconds / grid seconds. `--arms grid`
   or `point`: that sweep alone; `--trace FILE`: where its seconds go (bench/_trace.py), summed in the record;
   `--cudnn-attention`: both on torch's default attention backends, as rewind evaluated before it left cuDNN's out.
2. Per-item agreement: lm-eval's per-document samples of every (point, task), grid against point by point: the
   items whose per-document metrics differ; and the noise floor, the same count between two point-by-point runs of
   the same points (--noise-points, scored again by a fresh session).
3. A --gen-shape random-weight model (default qwen: Qwen2.5-7B's shape), one --points-point generation pass of
   --new-tokens new tokens after --tokens prompt tokens, --batch rows per point: one grid pass against a merged
   pass per point (bench/grid_forward.py's `measure`, OFT on its cayley path and LoRA on linear).
One JSON object per part on stdout, appended to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import _records  # these three are bench-local: the script's own directory is first on sys.path
import _shapes
import _trace
import torch
from alpha_switch import random_adapter
from grid_forward import measure

from rewind import engine, models, results, sweep
from rewind.evaluate import harness
from rewind.evaluate.grid_lm import GridLM
from rewind.session import Session

SAMPLES: dict[
    tuple[str, str, str], dict
] = {}  # (point, split, task) -> {doc_id: per-document metrics}, of the current run


def capture_samples() -> None:
    """Every lm-eval evaluate() keeps its per-document metrics under the point it scored."""
    import lm_eval.evaluator as evaluator

    original, state = evaluator.evaluate, {}
    engine_point, score = Session._engine_point, harness.Evaluator.score

    def tracked(self, point):
        at = engine_point(self, point)
        state["point"] = at.describe()
        return at

    def split_scored(self, entry, lm=None):
        state["split"] = self.split
        return score(self, entry, lm)

    def evaluate(*args, **kwargs):
        out = original(*args, **{**kwargs, "log_samples": True})
        lm = kwargs["lm"]
        at = lm._points[lm._replaying or 0].describe() if isinstance(lm, GridLM) and lm._points else state["point"]
        for task, samples in out.get("samples", {}).items():
            SAMPLES[(at, state["split"], task)] = {
                s["doc_id"]: {m: s.get(m) for m in s.get("metrics", [])} for s in samples
            }
        return out

    Session._engine_point, harness.Evaluator.score, evaluator.evaluate = tracked, split_scored, evaluate


def timed_sweep(spec: sweep.SweepSpec, out: Path) -> tuple[float, dict]:
    SAMPLES.clear()
    _trace.ARM["name"] = out.name
    start = time.perf_counter()
    sweep.Sweep(spec, out).run(progress=False)
    return time.perf_counter() - start, dict(SAMPLES)


def differing(a: dict, b: dict) -> dict:
    """Items scored in both runs, and those whose per-document metrics differ."""
    shared = [(key, doc) for key in a.keys() & b.keys() for doc in a[key].keys() & b[key].keys()]
    return {"items": len(shared), "differ": sum(a[key][doc] != b[key][doc] for key, doc in shared)}


def sweep_part(args, spec_fields: dict, work: Path) -> dict:
    """--arms grid,point: both sweeps, their ratio and agreement; one arm alone: its seconds (and --trace)."""
    arms = args.arms.split(",")
    record = {"part": "sweep", "arms": arms}
    if "grid" in arms:
        grid_s, grid = timed_sweep(sweep.SweepSpec(**spec_fields, batch_points="auto"), work / "grid")
        record["grid_s"] = round(grid_s, 2)
    if "point" in arms:
        point_s, point = timed_sweep(sweep.SweepSpec(**spec_fields, batch_points=1), work / "point")
        record["point_by_point_s"] = round(point_s, 2)
    if len(arms) == 2:
        record |= {"speedup": round(point_s / grid_s, 3), "grid_vs_point": differing(grid, point)}
    record |= {k: spec_fields[k] for k in ("base", "adapter", "paths", "target", "general", "limit", "device")}
    record["batch_size"] = spec_fields.get("batch_size") or "auto"
    record["cudnn_attention"] = args.cudnn_attention
    if args.noise_points and "point" in arms:
        record["noise_floor"] = differing(noise_samples(args, spec_fields, work), point)
    if args.trace:
        record["seconds_in"] = _trace.summary(args.trace)
    return record


def noise_samples(args, spec_fields: dict, work: Path) -> dict:
    """--noise-points scored again, point by point, by a fresh session: their per-document metrics."""
    _trace.ARM["name"] = "noise"
    session = Session(sweep.SweepSpec(**spec_fields, batch_points=1), work / "noise")
    session.open()
    SAMPLES.clear()
    keys = [results.Point.of({"path": p.split("@")[0], "alpha": float(p.split("@")[1])}) for p in args.noise_points]
    session.evaluate(keys, results.VALIDATION)
    return dict(SAMPLES)


def generation_part(args) -> None:
    shape = "llama-small" if args.gen_shape == "tiny" else args.gen_shape
    model = _shapes.build(shape, args.device, models.torch_dtype(args.dtype))
    paths = {"oft": "cayley", "lora": "linear"}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.gen_methods.split(","):
            rw = engine.attach(model, random_adapter(model, method, Path(tmp) / method), path=paths[method])
            timing = argparse.Namespace(**{k: getattr(args, k) for k in ("points", "batch", "tokens", "new_tokens")})
            timing.device, timing.reps, timing.profile = args.device, 1, False
            record = {"part": "generate", "shape": shape, "method": method, "path": paths[method], **vars(timing)}
            _records.emit(record | measure(rw, "generate", timing), args.out)  # at once: a later timeout keeps this one
            rw.set(0.0)  # the next adapter binds to the base


def tiny_inputs(work: Path) -> dict:
    """--shape tiny: a random 2-layer Llama with SmolLM2's tokenizer and a random OFT adapter, short tasks."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import tinysweep
    from tiny import make_adapter

    base = tinysweep.chat_base(work / "base")
    make_adapter("oft", base, work / "oft")
    return {"base": str(work / "base"), "adapter": str(work / "oft"), "paths": ["cayley", "dense"], "limit": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=None, help="tiny: a CPU smoke test of every part")
    parser.add_argument("--base", default="smollm2")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--path", action="append", default=None)
    parser.add_argument("--alphas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    parser.add_argument("--target", action="append", default=None)
    parser.add_argument("--general", action="append", default=None)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--noise-points", nargs="*", default=["final@1", "base@0"], help="none: no noise floor")
    parser.add_argument("--batch-size", type=int, default=None, help="items per batch (default: lm-eval's auto)")
    parser.add_argument("--include-path", action="append", default=[], help="more task YAMLs, as rewind sweep's")
    parser.add_argument("--keep", default=None, help="write the sweeps under this dir (grid, point), not a temp dir")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--gen-shape", default="qwen")
    parser.add_argument("--gen-methods", default="oft,lora", help="adapters of the generation pass: oft, lora")
    parser.add_argument("--points", type=int, default=11)
    parser.add_argument("--batch", type=int, default=16, help="rows per point in the generation pass")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--skip", choices=["sweep", "generate"], default=None)
    parser.add_argument("--arms", default="grid,point", choices=["grid,point", "grid", "point"])
    parser.add_argument(
        "--cudnn-attention",
        action="store_true",
        help="evaluate on torch's default attention backends, cuDNN's too (rewind's before 2026-12-03)",
    )
    parser.add_argument("--trace", default=None, help="a JSONL file: every generate, forward, task and phase, timed")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    capture_samples()
    if args.cudnn_attention:
        harness.attention_backends = contextlib.nullcontext
    if args.trace:
        _trace.install(args.trace)
    with tempfile.TemporaryDirectory() as tmp:
        fields = {"base": args.base, "adapter": args.adapter, "paths": args.path or ["auto"], "limit": args.limit}
        fields |= {"batch_size": args.batch_size, "include_path": args.include_path}
        if args.shape == "tiny":
            fields = tiny_inputs(Path(tmp))
            args.gen_shape, args.points, args.batch, args.tokens, args.new_tokens = "tiny", 3, 2, 16, 8
            args.alphas = "0,0.5,1"
            args.target, args.general = ["math_offline_basic_arithmetic"], ["general_offline_wiki_ppl"]
        fields |= {"alphas": [float(a) for a in args.alphas.split(",")], "device": args.device, "dtype": args.dtype}
        fields |= {"target": args.target or ["math-offline"], "general": args.general or ["general-offline"]}
        if args.skip != "sweep":
            _records.emit(sweep_part(args, fields, Path(args.keep or tmp)), args.out)
    if args.skip != "generate":
        generation_part(args)


if __name__ == "__main__":
    main()
