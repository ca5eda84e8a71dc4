"""One-pass writes of W(alpha) on CUDA, through Triton: read W0 once, write W once.

torch has no single kernel for either switch that moves W-sized data twice. `addmm(W0, B, A, out=W)` copies W0 into
W and then runs a beta=1 gemm that reads W back, and the Cayley write is a bmm into W followed by W += W0: both
cross memory 5 times per element where 2 suffice (bench/switch_probe.py measured this on an H200). Each kernel
here computes a tile of the low-rank or block-diagonal product in fp32 registers next to the W0 tile it is added
to, and rounds once to W's dtype; addmm rounds the same sum once too, so LoRA writes agree with it to the last bit
but for the order of the fp32 accumulation. For the Cayley write the sum is now rounded once where the torch path
rounds the product first: at most one unit in the last place apart, never further from the exact value.

The paths use them when W0 and W are contiguous CUDA tensors and Triton imports (it comes with CUDA builds of
torch); REWIND_TRITON=0 turns them off, e.g. to time the torch writes against them. Called directly under
TRITON_INTERPRET=1, the kernels also run on CPU tensors: that is how the CPU test suite checks them.
"""

from __future__ import annotations

import functools
import os

import torch

# Tile shapes: a W tile of BLOCK_M x BLOCK_N elements per program, the grid's first axis along W's rows so that
# programs running side by side cover contiguous memory. 64 x 128 bf16 is 16 KiB read and 16 KiB written per program.
LOWRANK_TILE = {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4}
ROTATE_ROWS = 128  # rows per program of the block-diagonal write; its columns are one OFT block


def available() -> bool:
    """Triton imports and REWIND_TRITON is not 0."""
    return os.environ.get("REWIND_TRITON", "1") != "0" and _triton() is not None


def enabled(w0: torch.Tensor, out: torch.Tensor | None) -> bool:
    """Whether a path's write of W0 -> out runs here: both dense on one CUDA device, and Triton available."""
    return (out is not None and w0.is_cuda and out.device == w0.device and w0.is_contiguous()
            and out.is_contiguous() and available())


@functools.cache
def _triton():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None
    return triton, tl, _kernels(triton, tl)


def _precision(dtype: torch.dtype) -> str:
    """The kernels multiply fp32 tiles. tf32 holds bf16 and fp16 values exactly, so for 16-bit weights the tensor
    cores' tf32 product equals a bf16/fp16 matmul's (exact products, fp32 sums); fp32 weights need ieee, as torch's
    default matmul gives them. (Upcasting first also keeps Triton's CPU interpreter right: its bf16 dot is not.)"""
    return "ieee" if dtype == torch.float32 else "tf32"


def lowrank_add(w0: torch.Tensor, B: torch.Tensor, A: torch.Tensor, scale: float, out: torch.Tensor,
                tile: dict = LOWRANK_TILE) -> torch.Tensor:
    """out <- w0 + scale * B @ A, for w0/out [m, n], B [m, r], A [r, n]; same value as torch.addmm(w0, B, A,
    alpha=scale). `tile` (BLOCK_M, BLOCK_N, num_warps) is for benchmarks trying other shapes."""
    triton, _, kernels = _triton()
    m, n = w0.shape
    rank = B.shape[1]
    grid = (triton.cdiv(n, tile["BLOCK_N"]), triton.cdiv(m, tile["BLOCK_M"]))
    rank_step = max(16, min(64, triton.next_power_of_2(rank)))  # tl.dot's K is 16 at least; ranks > 64 loop
    kernels["lowrank_add"][grid](
        w0, B.contiguous(), A.contiguous(), out, m, n, float(scale),
        R=rank, BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"], BLOCK_R=rank_step,
        PRECISION=_precision(w0.dtype), num_warps=tile["num_warps"])
    return out


def rotate_add_supported(block: int) -> bool:
    """The block-diagonal kernel takes power-of-two OFT blocks of 16 or more (tl.dot's and tl.arange's limits)."""
    return block >= 16 and block & (block - 1) == 0


def rotate_add(w0: torch.Tensor, d: torch.Tensor, out: torch.Tensor, rows: int = ROTATE_ROWS) -> torch.Tensor:
    """out <- w0 + w0 @ blockdiag(d)^T, for w0/out [m, n] and d [n / b or 1, b, b] (one block shared by all), d
    rounded to w0's dtype as it is read (no cast kernel per tensor). `rows` per program: for benchmarks."""
    triton, _, kernels = _triton()
    m, n = w0.shape
    b = d.shape[-1]
    d = d.contiguous()
    grid = (n // b, triton.cdiv(m, rows))
    kernels["rotate_add"][grid](
        w0, d, out, m, n, 0 if d.shape[0] == 1 else b * b,
        BLOCK_M=rows, BLOCK=b, PRECISION=_precision(w0.dtype), num_warps=4)
    return out


def _kernels(triton, tl) -> dict:
    """The kernels, defined once Triton has imported (it is optional: CPU installs may lack it)."""

    @triton.jit
    def lowrank_add_kernel(w0, b, a, out, M, N, scale,
                           R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                           PRECISION: tl.constexpr):
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in tl.static_range(0, R, BLOCK_R):  # the rank is a compile-time constant: few distinct values
            ks = k0 + tl.arange(0, BLOCK_R)
            b_tile = tl.load(b + rows[:, None] * R + ks[None, :], mask=(rows[:, None] < M) & (ks[None, :] < R),
                             other=0.0)
            a_tile = tl.load(a + ks[:, None] * N + cols[None, :], mask=(ks[:, None] < R) & (cols[None, :] < N),
                             other=0.0)
            acc = tl.dot(b_tile.to(tl.float32), a_tile.to(tl.float32), acc, input_precision=PRECISION)
        inside = (rows[:, None] < M) & (cols[None, :] < N)
        offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
        w = tl.load(w0 + offsets, mask=inside)
        tl.store(out + offsets, (scale * acc + w.to(tl.float32)).to(out.dtype.element_ty), mask=inside)

    @triton.jit
    def rotate_add_kernel(w0, d, out, M, N, d_block_stride,
                          BLOCK_M: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
        block = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = block * BLOCK + tl.arange(0, BLOCK)
        k = tl.arange(0, BLOCK)
        inside = rows[:, None] < M
        offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
        w = tl.load(w0 + offsets, mask=inside, other=0.0)
        # d_j^T as a [BLOCK, BLOCK] tile: element (k, c) is d_j[c, k], in W's dtype as the torch write has it
        d_t = tl.load(d + block * d_block_stride + k[None, :] * BLOCK + k[:, None]).to(w0.dtype.element_ty)
        acc = tl.dot(w.to(tl.float32), d_t.to(tl.float32), input_precision=PRECISION)
        tl.store(out + offsets, (acc + w.to(tl.float32)).to(out.dtype.element_ty), mask=inside)

    return {"lowrank_add": lowrank_add_kernel, "rotate_add": rotate_add_kernel}
