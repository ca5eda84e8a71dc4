"""Where the alpha switch's time goes: each per-tensor formulation on Qwen2.5-7B's linear shapes, against a copy.

    PYTHONPATH=$PWD python3 bench/switch_probe.py --device cuda --out bench/results/switch_probe_h200.jsonl
    PYTHONPATH=$PWD python3 bench/switch_probe.py --device cpu --scale 0.05    # every variant's correctness only

It keeps the variants bench/README.md cites ("Where the time goes", "fused Triton writes") and no others.

Qwen2.5-7B has 196 adapted linear weights (28 layers x q, k, v, o, gate, up, down) of 4 distinct shapes: q,o
3584x3584, k,v 512x3584, gate,up 18944x3584, down 3584x18944 (13.1 GB in bf16). Holding them all is not needed:
each shape gets a *ring* of K copies (W0, W, adapter), K chosen so that one ring is several times the GPU's L2
(so no call finds its W0 in L2, as in a real switch), and a variant is timed over the whole ring back to back
(CUDA events, warm-up pass, median of --reps passes) -> time per tensor. "sum196" multiplies each shape's time per
tensor by its count (56, 56, 56, 28) and adds: the estimate of one switch of the whole model. The "model" section
then runs real 196-tensor loops (in the model's order, over the rings) to show launch overhead.

Variants (W0 bf16, W the output, c = alpha * lora scale; D = R(alpha) - I per 32x32 block, fp32, as rewind's path):
  copy                 W.copy_(W0): the bound every switch is measured against (reads W0, writes W)
  lora/rewind          rewind.paths.linear.Linear.write over the ring: on CUDA the Triton kernel (lora/triton),
                       else addmm(W0, B, A, alpha=c, out=W)
  lora/triton-MxN/w    rewind.paths.fused.lowrank_add with M x N tiles and w warps: reads W0 once, writes W once
  lora/addmm           the torch write, called directly (no path overhead)
  lora/copy+addmm_     what addmm(out=W) does inside torch for a 2-D input: copy W0 -> W, then gemm with beta=1
  lora/mm+add_         mm(cB, A, out=W), W += W0 (bf16 product rounded before the add)
  lora/part:addmm_     the gemm alone, in place on W (beta=1: reads and writes W; its values are not checked)
  lora/chunk16         rows in 16-MiB chunks: copy the chunk, addmm_ on it while it sits in L2
  oft/rewind-series    rewind.paths.cayley.Cayley.write (this checkout), peft's default Neumann series (5 terms)
  oft/triton-M         rewind.paths.fused.rotate_add, M rows x one 32-column block per program
  oft/einsum-formula   rewind before branch switch-probe: add(W0, rotate(W0, D.bf16), out=W) (rotate = einsum + reshape)
  oft/bmm+add_         bmm on strided [blocks, rows, 32] views of W0 and W (no temporary), then W += W0: what
                       rewind.paths.cayley.rotate_add does since branch switch-probe
  oft/dense-lerp       lerp(W0, W1, alpha, out=W): the dense path's kernel (reads 2, writes 1), for reference
  compiled/*           torch.compile'd fused kernels (separate process, --compile-cap seconds at most; optional)
A '*' after a time: issuing the launches took the CPU at least 80% of the device time (launch-bound).
Every variant's W is checked against the current formulation (rewind's before this branch) to bf16 tolerance
(|diff| <= 2^-7 |ref| + 2^-6 mean|ref|); "err32" is its max error against the same math in fp32, / max|W|.

"model" times real 196-tensor loops: a copy per tensor, rewind's paths (LoRA; OFT with the series and with the
exact solve), addmm per tensor and session 1's einsum formula. GPU runtime: about 20-30 s for the parent (4 rings
of ~4x L2 each, ~5 GiB resident); the compile child starts first and runs alongside, is cut at --compile-cap (30 s)
and waited for at most 15 s more.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rewind.paths import fused
from rewind.paths.base import Bound, computed
from rewind.paths.cayley import Cayley, _rotation_minus_identity
from rewind.paths.linear import Linear
from rewind.updates.lora import LowRank
from rewind.updates.oft import Rotation, rotate

LAYERS = 28
SHAPES = {"q,o": (3584, 3584, 2), "k,v": (512, 3584, 2), "gate,up": (18944, 3584, 2), "down": (3584, 18944, 1)}
MODULES = [
    ("q", "q,o"),
    ("k", "k,v"),
    ("v", "k,v"),
    ("o", "q,o"),
    ("gate", "gate,up"),
    ("up", "gate,up"),
    ("down", "down"),
]
RANK, BLOCK, LORA_SCALE, NEUMANN, ALPHA = 16, 32, 2.0, 5, 0.7
CHUNK_MIB = 16  # row chunks small enough to stay in L2
BF16 = torch.bfloat16
T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def scaled(d: int, scale: float) -> int:
    return d if scale == 1 else max(BLOCK, round(d * scale / BLOCK) * BLOCK)


# --- timing -------------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, device: torch.device, reps: int):
        self.cuda, self.reps = device.type == "cuda", reps

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], object], reps: int | None = None, warmup: int = 1) -> tuple[float, float]:
        """(median device seconds, median CPU seconds to issue fn) over reps runs of fn."""
        for _ in range(warmup):
            fn()
        self.sync()
        gpu, cpu = [], []
        for _ in range(reps or self.reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                t = time.perf_counter()
                fn()
                cpu.append(time.perf_counter() - t)
                end.record()
                end.synchronize()
                gpu.append(start.elapsed_time(end) / 1e3)
            else:
                t = time.perf_counter()
                fn()
                cpu.append(time.perf_counter() - t)
                gpu.append(cpu[-1])
        return statistics.median(gpu), statistics.median(cpu)


def copy_bandwidth(device: torch.device, clock: Clock, gib: float) -> float | None:
    """Bytes read + written per second by one large device copy (as bench/alpha_switch.py measures it)."""
    if device.type != "cuda":
        return None
    pair = [torch.empty(int(gib * 2**30) // 2, dtype=BF16, device=device) for _ in range(2)]
    t, _ = clock.time(lambda: pair[1].copy_(pair[0]), reps=5)
    pair.clear()
    torch.cuda.empty_cache()
    return 2 * int(gib * 2**30) / t


# --- data ---------------------------------------------------------------------------------------------------------


@dataclass
class Ring:
    name: str
    rows: int
    cols: int
    count: int  # tensors of this shape in the model
    k: int  # copies held
    w0: torch.Tensor  # [k, rows, cols] bf16
    w: torch.Tensor  # outputs
    B: torch.Tensor  # [k, rows, r] bf16
    A: torch.Tensor  # [k, r, cols] bf16
    Q: torch.Tensor  # [k, blocks, b, b] fp32 skew
    D: torch.Tensor  # R(alpha) - I, Neumann branch as the bench's adapters (peft default), fp32
    extra: dict = field(default_factory=dict)  # w1 (dense W1), refs

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * 2


def skew(shape, device, gen_scale=0.01) -> torch.Tensor:
    M = torch.randn(*shape, device=device) * gen_scale
    return M - M.transpose(-1, -2)


def make_rings(args, device: torch.device, full: bool = True) -> dict[str, Ring]:
    l2 = 50 * 2**20
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", l2) or l2
    ring_bytes = args.ring_mb * 2**20 if args.ring_mb else 4 * l2
    rings = {}
    torch.manual_seed(0)
    for name, (rows, cols, per_layer) in SHAPES.items():
        rows, cols = scaled(rows, args.scale), scaled(cols, args.scale)
        count = per_layer * args.layers
        k = min(count, max(2, math.ceil(ring_bytes / (rows * cols * 2)))) if device.type == "cuda" else 2
        w0 = (torch.randn(k, rows, cols, device=device) * 0.02).to(BF16)
        B = (torch.randn(k, rows, RANK, device=device) * 0.05).to(BF16)
        A = (torch.randn(k, RANK, cols, device=device) * 0.05).to(BF16)
        Q = skew((k, cols // BLOCK, BLOCK, BLOCK), device)
        D = _rotation_minus_identity(Q.flatten(0, 1) * ALPHA, NEUMANN).view_as(Q)
        r = Ring(name, rows, cols, count, k, w0, torch.empty_like(w0), B, A, Q, D)
        if full:
            r.extra["w1"] = torch.stack([Rotation(Q[i], NEUMANN).merged(w0[i]).to(BF16) for i in range(k)])
        # references on copy 0: the current formulations exactly, and the same math in fp32
        c = ALPHA * LORA_SCALE
        r.extra["ref_lora"] = torch.addmm(w0[0], B[0], A[0], alpha=c)
        r.extra["ref_oft"] = torch.add(w0[0], rotate(w0[0], D[0].to(BF16)))
        r.extra["f32_lora"] = torch.addmm(w0[0].float(), B[0].float(), A[0].float(), alpha=c)
        r.extra["f32_oft"] = w0[0].float() + rotate(w0[0].float(), D[0])
        rings[name] = r
    return rings


def compare(got: torch.Tensor, ref: torch.Tensor, f32: torch.Tensor) -> dict:
    g, r = got.float(), ref.float()
    diff = (g - r).abs()
    tol = 2**-7 * r.abs() + 2**-6 * float(r.abs().mean())
    finite = bool(torch.isfinite(g).all())
    return {
        "max_abs_err": float(diff.max()) if finite else float("nan"),
        "err32": float((g - f32).abs().max() / f32.abs().max()) if finite else float("nan"),
        "ok": finite and bool((diff <= tol).all()),
    }


# --- variants -----------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    family: str
    key: str
    one: Callable[[Ring], Callable[[int], object]]  # -> f(i): writes ring.w[i]
    all: Callable[[Ring], Callable[[], object]] | None = None  # -> g(): the whole ring in one go
    check: bool = True  # compare ring.w[0] with the current formulation


def block_views(w0: torch.Tensor, w: torch.Tensor, d: torch.Tensor):
    """[blocks, rows, b] strided views of W0 and W (block j of every row) and D^T per block: W_j = W0_j @ D_j^T."""
    rows, cols = w0.shape
    nb = cols // BLOCK
    return (
        w0.view(rows, nb, BLOCK).transpose(0, 1),
        w.view(rows, nb, BLOCK).transpose(0, 1),
        d.expand(nb, BLOCK, BLOCK).transpose(1, 2),
    )


def path_writers(path_cls, items_of):
    """(one, all) for a rewind path: bound to each ring tensor alone (f(i) writes tensor i), and to the whole ring
    at once (g() writes them all, as a model's switch does)."""

    def one(r):
        paths = [path_cls([item]) for item in items_of(r)]
        return lambda i: paths[i].write([ALPHA])

    def all_(r):
        path = path_cls(items_of(r))
        return lambda: path.write([ALPHA] * r.k)

    return one, all_


def chunks(r: Ring, mib: int) -> list[tuple[int, int]]:
    step = max(1, (mib * 2**20) // (r.cols * 2))
    return [(s, min(s + step, r.rows)) for s in range(0, r.rows, step)]


def lora_variants() -> list[Variant]:
    c = ALPHA * LORA_SCALE

    def copy(r):
        return lambda i: r.w[i].copy_(r.w0[i])

    def rewind_paths(r):
        return [Bound(f"{r.name}.{i}", LowRank(r.B[i], r.A[i], LORA_SCALE), r.w0[i], r.w[i]) for i in range(r.k)]

    rewind_one, rewind_all = path_writers(Linear, rewind_paths)

    def addmm(r):
        return lambda i: torch.addmm(r.w0[i], r.B[i], r.A[i], alpha=c, out=r.w[i])

    def copy_addmm_(r):
        def f(i):
            r.w[i].copy_(r.w0[i])
            r.w[i].addmm_(r.B[i], r.A[i], alpha=c)

        return f

    def mm_add(r):
        Bc = r.B * c

        def f(i):
            torch.mm(Bc[i], r.A[i], out=r.w[i])
            r.w[i].add_(r.w0[i])

        return f

    def chunked(r):
        spans = chunks(r, CHUNK_MIB)

        def f(i):
            w, w0, B, A = r.w[i], r.w0[i], r.B[i], r.A[i]
            for s, e in spans:
                w[s:e].copy_(w0[s:e])
                w[s:e].addmm_(B[s:e], A, alpha=c)

        return f

    def part_addmm_(r):
        return lambda i: r.w[i].addmm_(r.B[i], r.A[i], alpha=c)

    def triton(tile):
        return lambda r: lambda i: fused.lowrank_add(r.w0[i], r.B[i], r.A[i], c, r.w[i], tile)

    out = [
        Variant("lora", "copy", copy, check=False),
        Variant("lora", "rewind", rewind_one, rewind_all),
        Variant("lora", "addmm", addmm),
        Variant("lora", "copy+addmm_", copy_addmm_),
        Variant("lora", "mm+add_", mm_add),
        Variant("lora", "part:addmm_", part_addmm_, check=False),
        Variant("lora", f"chunk{CHUNK_MIB}", chunked),
    ]
    if torch.cuda.is_available() and fused.available():
        out += [
            Variant("lora", f"triton-{m}x{n}/{w}", triton({"BLOCK_M": m, "BLOCK_N": n, "num_warps": w}))
            for m, n, w in ((64, 128, 4), (32, 256, 4), (64, 256, 8), (128, 128, 8), (128, 64, 4), (32, 128, 4))
        ]
    return out


def oft_variants() -> list[Variant]:
    def einsum_formula(r):
        return lambda i: torch.add(r.w0[i], rotate(r.w0[i], r.D[i].to(BF16)), out=r.w[i])

    def bmm_add(r):
        def f(i):
            a, o, dt = block_views(r.w0[i], r.w[i], r.D[i].to(BF16))
            torch.bmm(a, dt, out=o)
            r.w[i].add_(r.w0[i])

        return f

    def dense_lerp(r):
        return lambda i: torch.lerp(r.w0[i], r.extra["w1"][i], ALPHA, out=r.w[i])

    def triton(rows):
        return lambda r: lambda i: fused.rotate_add(r.w0[i], r.D[i].to(BF16), r.w[i], rows)

    def items(r):
        return [Bound(f"{r.name}.{i}", Rotation(r.Q[i], NEUMANN), r.w0[i], r.w[i]) for i in range(r.k)]

    series_one, series_all = path_writers(Cayley, items)
    out = [
        Variant("oft", "rewind-series", series_one, series_all),
        Variant("oft", "einsum-formula", einsum_formula),
        Variant("oft", "bmm+add_", bmm_add),
        Variant("oft", "dense-lerp", dense_lerp, check=False),
    ]
    if torch.cuda.is_available() and fused.available():
        out += [Variant("oft", f"triton-{m}", triton(m)) for m in (32, 64, 128, 256)]
    return out


def run_variant(v: Variant, r: Ring, clock: Clock) -> dict:
    rec = {
        "section": "shape",
        "family": v.family,
        "variant": v.key,
        "shape": r.name,
        "rows": r.rows,
        "cols": r.cols,
        "count": r.count,
        "ring": r.k,
    }
    try:
        one = v.one(r)
        if v.check:
            r.w[0].fill_(float("nan"))
            one(0)
            fam = "lora" if v.family == "lora" else "oft"
            rec.update(compare(r.w[0], r.extra[f"ref_{fam}"], r.extra[f"f32_{fam}"]))
        whole = v.all(r) if v.all else (lambda: [one(i) for i in range(r.k)])
        t, cpu = clock.time(whole)
        rec.update(per_tensor_s=t / r.k, cpu_issue_per_tensor_s=cpu / r.k)
    except Exception as e:  # a variant torch cannot run here is reported, not fatal
        rec["error"] = f"{type(e).__name__}: {e}"[:300]
    return rec


# --- the whole model: 196 tensors in the model's order ------------------------------------------------------------


def old_cayley_write(path: Cayley, alphas) -> None:
    """rewind.paths.cayley.Cayley._write before this branch (einsum + reshape + add), kept to time it."""
    alpha_of = {id(item): a for item, a in zip(path.items, alphas)}
    for key, spans in path._spans.items():
        Q = path._Q[key]
        scale = torch.cat([torch.full((n,), path.s(alpha_of.get(id(i), 0.0))) for i, _, n in spans])
        sQ = Q * scale.to(Q.device).view(-1, 1, 1)
        D = _rotation_minus_identity(sQ, key[1])
        for item, start, n in spans:
            d = D[start : start + n]
            computed(item, lambda w0, out, d=d: torch.add(w0, rotate(w0, d.to(w0.dtype)), out=out))


def model_loops(rings: dict[str, Ring], clock: Clock, args) -> list[dict]:
    used = {name: 0 for name in rings}
    lin, rot = [], []
    for layer in range(args.layers):
        for module, shape in MODULES:
            r = rings[shape]
            i = used[shape] % r.k
            used[shape] += 1
            name = f"layers.{layer}.{module}"
            lin.append(Bound(name, LowRank(r.B[i], r.A[i], LORA_SCALE), r.w0[i], r.w[i]))
            rot.append(Bound(name, Rotation(r.Q[i], NEUMANN), r.w0[i], r.w[i]))
    alphas = [ALPHA] * len(lin)
    c = ALPHA * LORA_SCALE
    linear, cayley = Linear(lin), Cayley(rot)
    cayley_exact = Cayley([Bound(b.name, Rotation(b.delta.Q, None), b.w0, b.out) for b in rot])

    def copy_loop():
        for b in lin:
            b.out.copy_(b.w0)

    def addmm_loop():
        for b in lin:
            torch.addmm(b.w0, b.delta.B, b.delta.A, alpha=c, out=b.out)

    loops = {
        "copy: Python loop": copy_loop,
        "lora: rewind Linear.write": lambda: linear.write(alphas),
        "lora: addmm loop": addmm_loop,
        "oft: rewind Cayley.write (series, this checkout)": lambda: cayley.write(alphas),
        "oft: rewind Cayley.write (exact solve, this checkout)": lambda: cayley_exact.write(alphas),
        "oft: einsum formula (rewind before this branch, series)": lambda: old_cayley_write(cayley, alphas),
    }
    out = []
    for key, fn in loops.items():
        rec = {"section": "model", "variant": key, "tensors": len(lin)}
        try:
            t, cpu = clock.time(fn, reps=max(3, args.reps // 2))
            rec.update(model_s=t, cpu_issue_s=cpu)
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"[:300]
        out.append(rec)
    return out


# --- torch.compile'd fused kernels, in a child process ------------------------------------------------------------


def lora_unrolled(w0, B, A, c, out):
    acc = w0.float()
    Bc, Af = B.float() * c, A.float()
    for j in range(RANK):
        acc = acc + Bc[:, j : j + 1] * Af[j : j + 1, :]
    out.copy_(acc)


def lora_reduce(w0, B, A, c, out):
    out.copy_(w0.float() + c * (B.float().unsqueeze(2) * A.float().unsqueeze(0)).sum(1))


def oft_fused(w0, D, out):
    rows, cols = w0.shape
    w = w0.float().view(rows, cols // BLOCK, 1, BLOCK)
    rot = (w * D.unsqueeze(0)).sum(-1)  # [rows, blocks, c] = sum_k W0[rows, blocks, k] D[blocks, c, k]
    out.copy_((w.squeeze(2) + rot).view(rows, cols))


def oft_einsum_formula(w0, D, out):
    torch.add(w0, rotate(w0, D.to(w0.dtype)), out=out)


def compile_child(args) -> None:
    """Compile, check, print @@READY, wait for a line on stdin, time, print @@{json} lines and @@DONE."""
    device = torch.device(args.device)
    settings = [
        ("torch._inductor.config", "compile_threads", 1),
        ("torch._inductor.config", "triton.autotune_pointwise", False),  # no benchmarking while parent times
        ("torch.fx.experimental._config", "use_duck_shape", False),
    ]  # 3584 x 3584 must not specialize
    for module, name, value in settings:
        try:
            import importlib

            obj = importlib.import_module(module)
            *path, leaf = name.split(".")
            for part in path:
                obj = getattr(obj, part)
            setattr(obj, leaf, value)
        except Exception:
            pass
    clock = Clock(device, args.reps)
    rings = make_rings(args, device, full=False)
    c = torch.tensor(ALPHA * LORA_SCALE, device=device)
    # most telling first: past the cap the rest is skipped; one dynamic-shape compile serves all four shapes
    fns = {
        ("compiled", "lora rank-1 unrolled fp32"): (torch.compile(lora_unrolled, dynamic=True), "lora"),
        ("compiled", "oft fused rotation fp32"): (torch.compile(oft_fused, dynamic=True), "oft"),
        ("compiled", "oft einsum formula"): (torch.compile(oft_einsum_formula, dynamic=True), "oft"),
        ("compiled", "lora reduction fp32"): (torch.compile(lora_reduce, dynamic=True), "lora"),
    }
    ready, records = {}, []
    order = sorted(rings.values(), key=lambda r: r.rows == r.cols)  # a square shape first would specialize
    for (fam, key), (fn, kind) in fns.items():
        for r in order:
            rec = {
                "section": "shape",
                "family": fam,
                "variant": key,
                "shape": r.name,
                "rows": r.rows,
                "cols": r.cols,
                "count": r.count,
                "ring": r.k,
            }
            if elapsed() > args.compile_cap:
                rec["error"] = f"skipped: compile cap {args.compile_cap}s reached"
                records.append(rec)
                continue
            if kind == "lora":

                def one(i, fn=fn, r=r):
                    fn(r.w0[i], r.B[i], r.A[i], c, r.w[i])
            else:

                def one(i, fn=fn, r=r):
                    fn(r.w0[i], r.D[i], r.w[i])

            try:
                t = time.perf_counter()
                r.w[0].fill_(float("nan"))
                one(0)
                clock.sync()
                rec["first_call_s"] = time.perf_counter() - t
                rec.update(compare(r.w[0], r.extra[f"ref_{kind}"], r.extra[f"f32_{kind}"]))
                ready[(key, r.name)] = one
            except Exception as e:
                rec["error"] = f"{type(e).__name__}: {e}"[:300]
            records.append(rec)
    print("@@READY", flush=True)
    sys.stdin.readline()
    for rec in records:
        one = ready.get((rec["variant"], rec["shape"]))
        if one is not None:
            r = rings[rec["shape"]]
            try:
                t, cpu = clock.time(lambda one=one, r=r: [one(i) for i in range(r.k)])
                rec.update(per_tensor_s=t / r.k, cpu_issue_per_tensor_s=cpu / r.k)
            except Exception as e:
                rec["error"] = f"{type(e).__name__}: {e}"[:300]
        print("@@" + json.dumps(rec), flush=True)
    print("@@DONE", flush=True)


class Child:
    """The compile child: started first so that compiling overlaps the parent's measurements."""

    def __init__(self, args):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--compile-child",
            "--device",
            args.device,
            "--scale",
            str(args.scale),
            "--layers",
            str(args.layers),
            "--reps",
            str(args.reps),
            "--compile-cap",
            str(args.compile_cap),
        ] + (["--ring-mb", str(args.ring_mb)] if args.ring_mb else [])
        self.err = open(os.devnull if not args.child_log else args.child_log, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready_at = None

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def results(self, deadline: float) -> tuple[list[dict], str]:
        records, state = [], "waiting"
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - elapsed()))
            except queue.Empty:
                state = f"timed out in state {state}"
                break
            if line is None:
                state = f"child exited (rc {self.proc.poll()}) in state {state}"
                break
            if line == "@@READY":
                self.ready_at, state = elapsed(), "ready"
                self.proc.stdin.write("go\n")
                self.proc.stdin.flush()
            elif line == "@@DONE":
                state = "done"
                break
            elif line.startswith("@@"):
                records.append(json.loads(line[2:]))
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait()
        self.err.close()
        return records, state


# --- report -------------------------------------------------------------------------------------------------------


def table(shape_recs: list[dict], rings: dict[str, Ring], bandwidth: float | None, cuda: bool) -> list[dict]:
    names = list(rings)
    by = {}
    for rec in shape_recs:
        by.setdefault((rec["family"], rec["variant"]), {})[rec["shape"]] = rec
    copy = by.get(("lora", "copy"), {})
    copy_sum = sum(copy[s]["per_tensor_s"] * rings[s].count for s in names if "per_tensor_s" in copy.get(s, {}))
    total_bytes = sum(r.nbytes * r.count for r in rings.values())
    head = (
        f"{'family':9} {'variant':27}"
        + "".join(f"{n + f'({rings[n].count})':>14}" for n in names)
        + f"{'sum196 ms':>11}{'x copy':>8}{'err32':>10}  ok"
    )
    print(
        "\nper tensor, microseconds (ring of K copies per shape, K = "
        + ", ".join(f"{n}: {r.k}" for n, r in rings.items())
        + "); sum196 = sum of count x per tensor;"
        " * = launch-bound"
    )
    if bandwidth:
        print(
            f"copy bound from one large copy: {2 * total_bytes / bandwidth * 1e3:.2f} ms for "
            f"{total_bytes / 1e9:.2f} GB at {bandwidth / 1e12:.2f} TB/s (read + write)"
        )
    print(head)
    print("-" * len(head))
    sums = []
    for (fam, key), per in by.items():
        cells, total, errs, oks = [], 0.0, [], []
        for n in names:
            rec = per.get(n, {})
            if "per_tensor_s" in rec:
                star = "*" if cuda and rec.get("cpu_issue_per_tensor_s", 0) >= 0.8 * rec["per_tensor_s"] else " "
                cells.append(f"{rec['per_tensor_s'] * 1e6:13.1f}{star}")
                total += rec["per_tensor_s"] * rings[n].count
            else:
                cells.append(f"{'err' if 'error' in rec else '-':>13} ")
                total = float("nan")
            if rec.get("err32") is not None:
                errs.append(rec["err32"])
            if "ok" in rec:
                oks.append(rec["ok"])
        ratio = total / copy_sum if copy_sum else float("nan")
        err = f"{max(errs):10.2e}" if errs else f"{'':10}"
        ok = ("yes" if all(oks) else "NO") if oks else "-"
        print(f"{fam:9} {key:27}" + "".join(cells) + f"{total * 1e3:11.2f}{ratio:8.2f}{err}  {ok}")
        sums.append(
            {
                "section": "sum196",
                "family": fam,
                "variant": key,
                "model_s": total,
                "x_copy": ratio,
                "ok": all(oks) if oks else None,
            }
        )
    for r in shape_recs:
        if "error" in r:
            print(f"  {r['family']}/{r['variant']} on {r['shape']}: {r['error']}")
    return sums


def report(records: list[dict]) -> None:
    """The model loops; the per-shape table comes last: the end of the output is what a truncated log keeps."""
    print("\nwhole model, 196 tensors in the model's order over the rings (ms; cpu = time to issue the launches):")
    for rec in records:
        if rec.get("section") == "model" and "variant" in rec:
            if "error" in rec:
                print(f"  {rec['variant']:58} {rec['error']}")
            else:
                print(f"  {rec['variant']:58} {rec['model_s'] * 1e3:9.2f}   cpu {rec['cpu_issue_s'] * 1e3:8.2f}")
    for rec in records:
        if "error" in rec and "variant" not in rec:
            print(f"section {rec['section']} failed: {rec['error']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every dimension (multiples of 32 kept)")
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--reps", type=int, default=None, help="timed passes per variant (7 on cuda, 2 on cpu)")
    parser.add_argument("--ring-mb", type=int, default=0, help="bytes per ring (default 4 x L2)")
    parser.add_argument(
        "--compile-cap",
        type=float,
        default=30.0,
        help="seconds from start after which the compile child compiles nothing more (0: no child)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="skip the optional sections past this many seconds (cuda: 45, cpu: no limit)",
    )
    parser.add_argument("--child-log", default=None, help="the compile child's stderr goes here")
    parser.add_argument("--out", default=None, help="append JSON lines here (written section by section)")
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.reps = args.reps or (7 if args.device.startswith("cuda") else 2)
    args.budget = args.budget or (45.0 if args.device.startswith("cuda") else float("inf"))
    if args.compile_child:
        return compile_child(args)

    child = Child(args) if args.compile_cap > 0 else None
    device = torch.device(args.device)
    clock = Clock(device, args.reps)
    records: list[dict] = []

    def emit(recs: list[dict]) -> None:
        records.extend(recs)
        if args.out:
            with open(args.out, "a") as f:
                for rec in recs:
                    f.write(json.dumps({"bench": "switch_probe", **rec}) + "\n")

    def section(name: str, fn: Callable[[], list[dict]], optional: bool = True) -> list[dict]:
        if optional and elapsed() > args.budget:
            log(f"{name}: skipped (past --budget {args.budget:.0f}s)")
            emit([{"section": name, "skipped": "budget"}])
            return []
        try:
            recs = fn()
        except Exception as e:  # one section failing must not lose the others
            recs = [{"section": name, "error": f"{type(e).__name__}: {e}"[:300]}]
        emit(recs)
        log(f"{name}: {len(recs)} records")
        return recs

    where = (
        torch.cuda.get_device_name(device)
        if clock.cuda
        else f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"
    )
    log(f"{where}, torch {torch.__version__}; compile child {'started' if child else 'off'}")
    bandwidth = copy_bandwidth(device, clock, 2.0)
    rings = make_rings(args, device)
    resident = sum(
        t.numel() * t.element_size() for r in rings.values() for t in [r.w0, r.w, r.extra["w1"], r.B, r.A, r.Q, r.D]
    )
    model_bytes = sum(r.nbytes * r.count for r in rings.values())
    log(
        "rings: "
        + ", ".join(f"{n} {r.rows}x{r.cols} x{r.k} of {r.count}" for n, r in rings.items())
        + f"; {resident / 2**30:.2f} GiB resident for a {model_bytes / 1e9:.2f} GB model: one ring per distinct "
        f"shape is held, per-tensor times are multiplied by the counts"
    )
    emit(
        [
            {
                "section": "meta",
                "device": where,
                "torch": torch.__version__,
                "scale": args.scale,
                "layers": args.layers,
                "reps": args.reps,
                "copy_bytes_per_s": bandwidth,
                "model_bytes": model_bytes,
                "copy_bound_s": 2 * model_bytes / bandwidth if bandwidth else None,
                "rings": {n: {"rows": r.rows, "cols": r.cols, "count": r.count, "k": r.k} for n, r in rings.items()},
                "rank": RANK,
                "block": BLOCK,
                "alpha": ALPHA,
                "neumann_terms": NEUMANN,
            }
        ]
    )

    shape_recs: list[dict] = []
    with torch.no_grad():
        for family, variants in (("lora", lora_variants()), ("oft", oft_variants())):
            shape_recs += section(
                f"shape/{family}",
                lambda v=variants: [run_variant(x, r, clock) for x in v for r in rings.values()],
                optional=False,
            )
        section("model", lambda: model_loops(rings, clock, args))
    if child:
        compiled, state = child.results(deadline=max(elapsed() + 5, args.compile_cap + 15))
        shape_recs += compiled
        emit(
            compiled
            + [{"section": "compile", "state": state, "ready_at_s": child.ready_at, "parent_ended_s": elapsed()}]
        )
        log(f"compile child: {state}, {len(compiled)} records")
    report(records)
    emit(table([r for r in shape_recs if "shape" in r], rings, bandwidth, clock.cuda))
    bad = [r for r in shape_recs if r.get("ok") is False]
    log(
        f"done; {len(bad)} unexpected mismatches"
        + (": " + ", ".join(f"{r['family']}/{r['variant']}/{r['shape']}" for r in bad) if bad else "")
    )


if __name__ == "__main__":
    main()
