"""One-pass writes of W(alpha) on CUDA, through Triton: read W0 once, write W once.

torch has no single kernel for either switch that moves W-sized data twice. `addmm(W0, B, A, out=W)` copies W0 into
W and then runs a beta=1 gemm that reads W back, and the Cayley write is a bmm into W followed by W += W0: both
cross memory 5 times per element where 2 suffice. Each kernel here computes a tile of the low-rank or
block-diagonal product in fp32 registers next to the W0 tile it is added to, and rounds once to W's dtype. That is
at least as exact as torch: addmm also rounds once, but cuBLAS may sum bf16 products in reduced precision, and the
torch Cayley write rounds the product before the add.

One launch writes every tensor of one shape: the kernels read their tensors' addresses from a small table, so a
7B model's 196 adapted matrices take 4 launches, not 196 (Triton's Python launch is slow enough that a launch per
tensor cost as much as the writes themselves). The measurements behind all of this, errors included, are in
bench/README.md ("fused Triton writes").

The paths use them when W0 and W are contiguous, 16-byte aligned CUDA tensors and Triton imports (it comes with
CUDA builds of torch); REWIND_TRITON=0 turns them off, e.g. to time the torch writes against them. Called directly
under TRITON_INTERPRET=1, the kernels also run on CPU tensors: that is how the CPU test suite checks them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch

# Tile shapes: a W tile of BLOCK_M x BLOCK_N elements per program, the grid's first axis along W's rows so that
# programs running side by side cover contiguous memory. 32 x 128 bf16 is 8 KiB read and 8 KiB written per program.
LOWRANK_TILE = {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4}  # chosen by bench/switch_probe.py (bench/README.md)
ROTATE_ROWS = 128  # rows per program of the block-diagonal write; its columns are one OFT block


def available() -> bool:
    """Triton imports and REWIND_TRITON is not 0."""
    return os.environ.get("REWIND_TRITON", "1") != "0" and _triton() is not None


def enabled(w0: torch.Tensor, out: torch.Tensor | None) -> bool:
    """Whether a path's write of W0 -> out runs here: both dense and aligned on one CUDA device, Triton available."""
    return (
        out is not None
        and w0.is_cuda
        and out.device == w0.device
        and out.dtype == w0.dtype
        and w0.dtype in _DTYPES
        and _dense(w0)
        and _dense(out)
        and available()
    )


def _dense(t: torch.Tensor) -> bool:
    # the kernels promise the compiler 16-byte aligned base addresses (vector loads); torch allocates 256-byte aligned
    return t.is_contiguous() and t.data_ptr() % 16 == 0


def _aligned(t: torch.Tensor) -> torch.Tensor:
    return t if _dense(t) else t.contiguous().clone()


@functools.cache
def _triton():
    try:  # imported on first use: Triton is optional (CPU installs may lack it) and slow to import
        import triton
        import triton.language as tl

        from . import triton_kernels
    except ImportError:
        return None
    return triton, tl, triton_kernels


def _precision(dtype: torch.dtype) -> str:
    """The kernels multiply fp32 tiles. tf32 holds bf16 and fp16 values exactly, so for 16-bit weights the tensor
    cores' tf32 product equals a bf16/fp16 matmul's (exact products, fp32 sums); fp32 weights need ieee, as torch's
    default matmul gives them. (Upcasting first also keeps Triton's CPU interpreter right: its bf16 dot is not.)"""
    return "ieee" if dtype == torch.float32 else "tf32"


def _table(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """The tensors' addresses, one row per tensor, where the kernel reads them."""
    return torch.tensor(rows, dtype=torch.int64).to(device)


def lowrank_add(
    w0: torch.Tensor, B: torch.Tensor, A: torch.Tensor, scale: float, out: torch.Tensor, tile: dict = LOWRANK_TILE
) -> torch.Tensor:
    """out <- w0 + scale * B @ A, for w0/out [m, n], B [m, r], A [r, n], the fp32 sum rounded once (what
    torch.addmm(w0, B, A, alpha=scale) computes). `tile` (BLOCK_M, BLOCK_N, num_warps) is for benchmarks."""
    lowrank_add_many([(w0, B, A, out, scale)], tile)
    return out


def lowrank_add_many(jobs: Sequence[tuple], tile: dict = LOWRANK_TILE) -> None:
    """lowrank_add for each (w0, B, A, out, scale) in one launch; all of one shape, rank, dtype and device."""
    triton, tl, kernels = _triton()
    w0 = jobs[0][0]
    m, n = w0.shape
    rank = jobs[0][1].shape[1]
    # in W's dtype (the kernel reads every address as one); temporaries may go when this returns: the caching
    # allocator hands their memory out again only to work queued after the launch
    factors = [(_aligned(B.to(w0.dtype)), _aligned(A.to(w0.dtype))) for _, B, A, _, _ in jobs]
    table = _table(
        [[j[0].data_ptr(), B.data_ptr(), A.data_ptr(), j[3].data_ptr()] for j, (B, A) in zip(jobs, factors)], w0.device
    )
    scales = torch.tensor([float(j[4]) for j in jobs], dtype=torch.float32).to(w0.device)
    grid = (triton.cdiv(n, tile["BLOCK_N"]), triton.cdiv(m, tile["BLOCK_M"]), len(jobs))
    rank_step = max(16, min(64, triton.next_power_of_2(rank)))  # tl.dot's K is 16 at least; ranks > 64 loop
    kernels.lowrank_add[grid](
        table,
        scales,
        m,
        n,
        R=rank,
        BLOCK_M=tile["BLOCK_M"],
        BLOCK_N=tile["BLOCK_N"],
        BLOCK_R=rank_step,
        DTYPE=_DTYPES[w0.dtype](tl),
        PRECISION=_precision(w0.dtype),
        num_warps=tile["num_warps"],
    )


def rotate_add_supported(block: int) -> bool:
    """The block-diagonal kernel takes power-of-two OFT blocks of 16 or more (tl.dot's and tl.arange's limits)."""
    return block >= 16 and block & (block - 1) == 0


def rotate_add(w0: torch.Tensor, d: torch.Tensor, out: torch.Tensor, rows: int = ROTATE_ROWS) -> torch.Tensor:
    """out <- w0 + w0 @ blockdiag(d)^T, for w0/out [m, n] and d [n / b or 1, b, b] (one block shared by all), d
    rounded to w0's dtype as it is read (no cast kernel per tensor). `rows` per program: for benchmarks."""
    rotate_add_many([(w0, out, 0)], d, d.shape[0] == 1, rows)
    return out


def rotate_add_many(jobs: Sequence[tuple], d: torch.Tensor, shared: bool, rows: int = ROTATE_ROWS) -> None:
    """rotate_add for each (w0, out, first block) in one launch: tensor i uses d[first_i : first_i + n / b], or
    d[first_i] for all its blocks if `shared` (OFT's block_share). All of one shape, dtype and device."""
    triton, tl, kernels = _triton()
    w0 = jobs[0][0]
    m, n = w0.shape
    b = d.shape[-1]
    d = _aligned(d)
    table = _table([[j[0].data_ptr(), j[1].data_ptr(), j[2] * b * b] for j in jobs], w0.device)
    grid = (n // b, triton.cdiv(m, rows), len(jobs))
    kernels.rotate_add[grid](
        table,
        d,
        m,
        n,
        0 if shared else b * b,
        BLOCK_M=rows,
        BLOCK=b,
        DTYPE=_DTYPES[w0.dtype](tl),
        PRECISION=_precision(w0.dtype),
        num_warps=4,
    )


_DTYPES = {
    torch.bfloat16: lambda tl: tl.bfloat16,
    torch.float16: lambda tl: tl.float16,
    torch.float32: lambda tl: tl.float32,
}
