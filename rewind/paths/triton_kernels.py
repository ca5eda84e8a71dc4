"""The Triton kernels behind fused.py (imported only when a CUDA write first needs them)."""

import triton
import triton.language as tl


@triton.jit
def address(table, index, DTYPE: tl.constexpr):
    # an address from the table; every one was checked 16-byte aligned (_dense), which vector loads need
    return tl.multiple_of(tl.load(table + index).to(tl.pointer_type(DTYPE)), 16)


@triton.jit
def lowrank_add(
    table,
    scales,
    M,
    N,
    R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    t = tl.program_id(2)
    w0, b = address(table, 4 * t, DTYPE), address(table, 4 * t + 1, DTYPE)
    a, out = address(table, 4 * t + 2, DTYPE), address(table, 4 * t + 3, DTYPE)
    scale = tl.load(scales + t)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in tl.static_range(0, R, BLOCK_R):  # the rank is a compile-time constant: few distinct values
        ks = k0 + tl.arange(0, BLOCK_R)
        b_tile = tl.load(b + rows[:, None] * R + ks[None, :], mask=(rows[:, None] < M) & (ks[None, :] < R), other=0.0)
        a_tile = tl.load(a + ks[:, None] * N + cols[None, :], mask=(ks[:, None] < R) & (cols[None, :] < N), other=0.0)
        acc = tl.dot(b_tile.to(tl.float32), a_tile.to(tl.float32), acc, input_precision=PRECISION)
    inside = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
    w = tl.load(w0 + offsets, mask=inside)
    tl.store(out + offsets, (scale * acc + w.to(tl.float32)).to(DTYPE), mask=inside)


@triton.jit
def rotate_add(
    table,
    d,
    M,
    N,
    d_block_stride,
    BLOCK_M: tl.constexpr,
    BLOCK: tl.constexpr,
    DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    t = tl.program_id(2)
    w0, out = address(table, 3 * t, DTYPE), address(table, 3 * t + 1, DTYPE)
    first = tl.load(table + 3 * t + 2)
    block = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    k = tl.arange(0, BLOCK)
    inside = rows[:, None] < M
    offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
    w = tl.load(w0 + offsets, mask=inside, other=0.0)
    # d_j^T as a [BLOCK, BLOCK] tile: element (k, c) is d_j[c, k], in W's dtype as the torch write has it
    d_t = tl.load(d + first + block * d_block_stride + k[None, :] * BLOCK + k[:, None]).to(DTYPE)
    acc = tl.dot(w.to(tl.float32), d_t.to(tl.float32), input_precision=PRECISION)
    tl.store(out + offsets, (acc + w.to(tl.float32)).to(DTYPE), mask=inside)
