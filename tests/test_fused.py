"""The Triton writes of rewind/paths/fused.py against independent float64 computations.

On a GPU they run as compiled kernels (and the paths use them: see the cuda cases of test_paths.py); without
one, in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1), which checks the same indexing, masking and
arithmetic. Each result must be the fp32 sum rounded once: within half a unit in the last place (ulp) of the
exact value on CUDA, plus the fp32 sum's own error; the interpreter rounds fp32 -> bf16 toward zero, so there
the bound is one ulp. torch's writes are no reference at this precision: cuBLAS may reduce bf16 products in
reduced precision (on an H200, addmm's bf16 result for the 64 x 128, rank-16 case below differed from this
kernel's, which meets the half-ulp bound, in 6.6% of the elements), and the torch Cayley write rounds the product
before the add.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rewind.paths import fused

pytest.importorskip("triton", reason="Triton is optional: CPU installs may lack it (pip install triton)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` numbers at |x| (x in float64)."""
    info = torch.finfo(dtype)
    exponent = torch.floor(torch.log2(x.abs().clamp_min(info.tiny)))
    return torch.exp2(exponent) * info.eps


def assert_rounded_once(out: torch.Tensor, exact: torch.Tensor, terms: torch.Tensor, summands: int) -> None:
    """|out - exact| <= half an ulp of out (one ulp interpreted) plus the fp32 sum's error bound, summands * eps32
    * the sum of |terms| (Higham's gamma_n)."""
    assert not out.isnan().any(), "some elements were not written"
    err = (out.double() - exact).abs()
    bound = (0.5 if DEVICE == "cuda" else 1.0) * ulp(out.double(), out.dtype) + summands * 2**-24 * terms
    assert bool((err <= bound).all()), f"max error {float((err - bound).max()):.3g} over the bound"


def random(shape, dtype, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * std).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,rank", [(64, 128, 16), (70, 130, 8), (33, 200, 70), (5, 300, 1)])
def test_lowrank_add_is_w0_plus_scaled_product(rows, cols, rank, dtype):
    w0, B, A = (
        random((rows, cols), dtype, seed=1),
        random((rows, rank), dtype, 0.1, 2),
        random((rank, cols), dtype, 0.1, 3),
    )
    scale = -0.7 * 2.0
    out = torch.full_like(w0, math.nan)  # poison: every element must be written
    assert fused.lowrank_add(w0, B, A, scale, out) is out
    product = B.double() @ A.double()
    exact = w0.double() + scale * product
    assert_rounded_once(out, exact, w0.double().abs() + abs(scale) * (B.double().abs() @ A.double().abs()), rank + 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "rows,cols,block,shared", [(64, 128, 32, False), (70, 128, 16, False), (10, 256, 64, False), (130, 64, 16, True)]
)
def test_rotate_add_is_w0_plus_blockdiagonal_product(rows, cols, block, shared, dtype):
    w0 = random((rows, cols), dtype, seed=4)
    d = random((1 if shared else cols // block, block, block), dtype, 0.05, 5)
    out = torch.full_like(w0, math.nan)
    assert fused.rotate_add(w0, d, out) is out
    blocks = w0.double().view(rows, cols // block, block)
    d64 = d.double().expand(cols // block, block, block)
    exact = w0.double() + torch.einsum("ojk,jck->ojc", blocks, d64).reshape(rows, cols)
    terms = w0.double().abs() + torch.einsum("ojk,jck->ojc", blocks.abs(), d64.abs()).reshape(rows, cols)
    assert_rounded_once(out, exact, terms, block + 2)


def test_one_launch_writes_many_tensors():
    """The paths' batched calls: each tensor of a launch gets its own factors, scale, or span of D's blocks."""
    dtype = torch.bfloat16
    w0s = [random((40, 96), dtype, seed=10 + i) for i in range(3)]
    outs = [torch.full_like(w, math.nan) for w in w0s]
    factors = [(random((40, 8), dtype, 0.1, 20 + i), random((8, 96), dtype, 0.1, 30 + i)) for i in range(3)]
    scales = [0.5, -1.0, 2.0]
    fused.lowrank_add_many([(w, B, A, o, c) for w, (B, A), o, c in zip(w0s, factors, outs, scales)])
    for w, (B, A), o, c in zip(w0s, factors, outs, scales):
        exact = w.double() + c * B.double() @ A.double()
        assert_rounded_once(o, exact, w.double().abs() + abs(c) * B.double().abs() @ A.double().abs(), 10)

    for shared in (False, True):  # D holds every tensor's blocks back to back; tensor i starts at block firsts[i]
        per_tensor = 1 if shared else 96 // 32
        d = random((3 * per_tensor + 2, 32, 32), torch.float32, 0.05, 40).to(dtype).float()
        firsts = [2 + i * per_tensor for i in range(3)][::-1]  # any order: the table says where each one starts
        outs = [torch.full_like(w, math.nan) for w in w0s]
        fused.rotate_add_many([(w, o, f) for w, o, f in zip(w0s, outs, firsts)], d, shared)
        for w, o, f in zip(w0s, outs, firsts):
            blocks = w.double().view(40, 3, 32)
            mine = d[f : f + per_tensor].double().expand(3, 32, 32)
            exact = w.double() + torch.einsum("ojk,jck->ojc", blocks, mine).reshape(40, 96)
            terms = w.double().abs() + torch.einsum("ojk,jck->ojc", blocks.abs(), mine.abs()).reshape(40, 96)
            assert_rounded_once(o, exact, terms, 34)


def test_rotate_add_rounds_d_to_the_weights_dtype():
    """The Cayley path hands the kernel D = R - I in fp32; the kernel uses it rounded to W's dtype, as the torch
    write does."""
    w0 = random((64, 128), torch.bfloat16, seed=6)
    d = random((4, 32, 32), torch.float32, 0.05, 7)
    if DEVICE != "cuda":  # the interpreter truncates where the GPU rounds: there, check the fp32 read alone
        d = d.to(torch.bfloat16).float()
    out = torch.full_like(w0, math.nan)
    fused.rotate_add(w0, d, out)
    blocks = w0.double().view(64, 4, 32)
    d16 = d.to(torch.bfloat16).double()
    exact = w0.double() + torch.einsum("ojk,jck->ojc", blocks, d16).reshape(64, 128)
    terms = w0.double().abs() + torch.einsum("ojk,jck->ojc", blocks.abs(), d16.abs()).reshape(64, 128)
    assert_rounded_once(out, exact, terms, 34)


def test_paths_use_the_kernels_only_where_they_apply(monkeypatch):
    w = torch.zeros(4, 4)
    assert not fused.enabled(w, w.clone())  # CPU tensors: torch writes
    assert not fused.enabled(w, None)
    assert fused.rotate_add_supported(32) and fused.rotate_add_supported(16)
    assert not fused.rotate_add_supported(8) and not fused.rotate_add_supported(48)
    if torch.cuda.is_available():
        wc = w.cuda()
        assert fused.enabled(wc, wc.clone())
        assert not fused.enabled(wc, wc.t().contiguous().t())  # a strided output: torch handles it
        assert not fused.enabled(wc, wc.half()) and not fused.enabled(wc.double(), wc.double())
        monkeypatch.setenv("REWIND_TRITON", "0")
        assert not fused.enabled(wc, wc.clone())


@pytest.mark.parametrize("kind", ["lora", "oft", "oft-exact", "oft-share"])
def test_paths_batch_their_tensors_into_the_kernels(kind, tmp_path, monkeypatch):
    """The paths' grouping (one launch per shape, each tensor its own alpha and span of D) writes what the torch
    writes do, per layer too. Without a GPU the kernels run interpreted, so the paths are let use them on CPU."""
    from tiny import make_adapter, tiny_base

    from rewind.engine import attach
    from rewind.schedule import Schedule

    base = tiny_base()
    make_adapter(kind, base, tmp_path / "a")
    reference, kernels = (attach(copy.deepcopy(base).to(DEVICE), tmp_path / "a") for _ in range(2))
    if DEVICE == "cpu":
        monkeypatch.setattr(
            fused,
            "enabled",
            lambda w0, out: out is not None and fused._dense(w0) and fused._dense(out) and fused.available(),
        )  # REWIND_TRITON=0 still means torch
    for alpha, schedule in [(0.7, None), (1.0, Schedule("list", (0.2, 1.3, 0.0)))]:
        with monkeypatch.context() as m:
            m.setenv("REWIND_TRITON", "0")
            reference.set(alpha, schedule, allow_extrapolation=True)
        kernels.set(alpha, schedule, allow_extrapolation=True)
        moved = 0
        for (name, want), got in zip(reference.model.named_parameters(), kernels.model.parameters()):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
            moved += name in kernels.update.deltas
        assert moved == len(kernels.update.deltas) > 0
