"""The Triton writes of rewind/paths/fused.py against independent float64 computations.

On a GPU they run as compiled kernels (and the paths use them: see the cuda cases of test_paths.py); without
one, in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1), which checks the same indexing, masking and
arithmetic. The interpreter rounds fp32 -> bf16 toward zero where the GPU rounds to nearest, so the bound here is
one unit in the last place (ulp) of the exact value; on CUDA the result must also agree with torch's own write.
"""

from __future__ import annotations

import math

import pytest
import torch

from rewind.paths import fused
from rewind.updates import rotate

pytest.importorskip("triton", reason="Triton is optional: CPU installs may lack it (pip install triton)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` numbers at |x| (x in float64)."""
    info = torch.finfo(dtype)
    exponent = torch.floor(torch.log2(x.abs().clamp_min(info.tiny)))
    return torch.exp2(exponent) * info.eps


def assert_within_one_ulp(out: torch.Tensor, exact: torch.Tensor, terms: torch.Tensor) -> None:
    """|out - exact| <= 1 ulp of exact, plus fp32 accumulation error (eps32 * the summed |terms|)."""
    assert not out.isnan().any(), "some elements were not written"
    err = (out.double() - exact).abs()
    bound = ulp(exact, out.dtype) + 4 * 2**-24 * terms
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
    assert_within_one_ulp(out, exact, w0.double().abs() + abs(scale) * (B.double().abs() @ A.double().abs()))
    if DEVICE == "cuda":  # the same single rounding as addmm: equal but for the order of the fp32 sums
        reference = torch.addmm(w0, B, A, alpha=scale)
        assert float((out != reference).double().mean()) < 1e-3


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
    assert_within_one_ulp(out, exact, terms)
    if DEVICE == "cuda":  # torch's write rounds the product before the add: at most 1 ulp apart
        reference = torch.add(w0, rotate(w0, d))
        assert bool(((out.double() - reference.double()).abs() <= ulp(reference.double(), dtype)).all())


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
