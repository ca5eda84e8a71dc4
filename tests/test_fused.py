"""The Triton writes of rewind/paths/fused.py against independent float64 computations.

On a GPU they run as compiled kernels (and the paths use them: see the cuda cases of test_paths.py); without
one, in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1), which checks the same indexing, masking and
arithmetic. Each result must be the fp32 sum rounded once: within half a unit in the last place (ulp) of the
exact value on CUDA, plus the fp32 sum's own error; the interpreter rounds fp32 -> bf16 toward zero, so there
the bound is one ulp. torch's writes are no reference at this precision: cuBLAS may reduce bf16 products in
reduced precision (on an H200 addmm differed from the exact sum in 7% of bf16 elements by more than that) and
the torch Cayley write rounds the product before the add.
"""

from __future__ import annotations

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
    w0, B, A = random((rows, cols), dtype, seed=1), random((rows, rank), dtype, 0.1, 2), random((rank, cols), dtype,
                                                                                               0.1, 3)
    scale = -0.7 * 2.0
    out = torch.full_like(w0, math.nan)  # poison: every element must be written
    assert fused.lowrank_add(w0, B, A, scale, out) is out
    product = B.double() @ A.double()
    exact = w0.double() + scale * product
    assert_rounded_once(out, exact, w0.double().abs() + abs(scale) * (B.double().abs() @ A.double().abs()), rank + 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,block,shared", [(64, 128, 32, False), (70, 128, 16, False), (10, 256, 64, False),
                                                    (130, 64, 16, True)])
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
        monkeypatch.setenv("REWIND_TRITON", "0")
        assert not fused.enabled(wc, wc.clone())
