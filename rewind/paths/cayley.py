"""cayley (OFT's natural path): R(alpha) = Cayley(s(alpha) * Q) per block, W(alpha) = W0 @ blockdiag(R(alpha))^T.

Scaling the generator keeps every point on the orthogonal group (exactly so on the exact-Cayley branch) and equals
peft's merge of the adapter whose stored generator was multiplied by s(alpha). All blocks of all bound tensors
with one block size are solved in one batched call.
"""

from __future__ import annotations

import itertools

import torch

from ..errors import RewindError
from ..updates.oft import SCALES, Rotation, neumann_series, rotate
from . import fused
from .base import PathKind, computed


class Cayley(PathKind):
    name = "cayley"
    summary = "Cayley(s(alpha)*Q): scale OFT's skew generator (OFT only)"

    def __init__(self, items, cayley_scale: str = "linear", **options):
        super().__init__(items, **options)
        if cayley_scale not in SCALES:
            raise RewindError(f"--cayley-scale {cayley_scale}: choose one of {', '.join(SCALES)}")
        self.s = SCALES[cayley_scale]
        groups: dict[tuple, list] = {}  # (block size, neumann terms) -> items sharing one batched solve
        for item in self.items:
            groups.setdefault((item.delta.block_size, item.delta.neumann_terms), []).append(item)
        self._Q = {
            key: torch.cat([i.delta.Q.to(i.w0.device, torch.float32) for i in group]) for key, group in groups.items()
        }
        self._spans = {}  # key -> (item, its first block in the group's Q, its number of blocks)
        for key, group in groups.items():
            starts = itertools.accumulate((len(i.delta.Q) for i in group), initial=0)
            self._spans[key] = [(i, start, len(i.delta.Q)) for i, start in zip(group, starts)]

    @classmethod
    def accepts(cls, delta):
        return isinstance(delta, Rotation)

    def _write(self, moving):
        alpha_of = {id(item): alpha for item, alpha in moving}
        for key, spans in self._spans.items():
            if not any(id(i) in alpha_of for i, _, _ in spans):
                continue
            Q = self._Q[key]
            scale = torch.cat([torch.full((n,), self.s(alpha_of.get(id(i), 0.0))) for i, _, n in spans])
            sQ = Q * scale.to(Q.device).view(-1, 1, 1)
            D = _rotation_minus_identity(sQ, key[1])
            kernel_fits = fused.rotate_add_supported(key[0])
            batches = {}  # tensors the fused kernel writes: one launch per shape
            for item, start, n in spans:
                if id(item) not in alpha_of:
                    continue
                if kernel_fits and fused.enabled(item.w0, item.out):
                    batch = (item.w0.shape, item.w0.dtype, item.w0.device, n == 1)
                    batches.setdefault(batch, []).append((item.w0, item.out, start))
                else:
                    d = D[start : start + n]
                    computed(item, lambda w0, out, d=d: rotate_add(w0, d, out))
            for (*_, shared), jobs in batches.items():
                fused.rotate_add_many(jobs, D, shared)


def rotate_add(w0: torch.Tensor, d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """out <- w0 + w0 @ blockdiag(d)^T, d [blocks or 1, b, b], with no W-sized temporary. d is rounded to w0's dtype
    first (bf16 on GPU): only the small part D = R - I goes through it, so small rotations keep their precision.

    One batched matmul over the blocks, on strided [blocks, rows, b] views of w0 and out (block j of every row),
    writes w0 @ blockdiag(d)^T straight into out; then out += w0. Same arithmetic as add(w0, rotate(w0, d)) (a
    product rounded to the dtype, then the add), but W-sized data crosses memory 5 times instead of 7: einsum's
    result is a [blocks, rows, b] temporary that rotate's reshape copies once more before the add reads it.
    On CUDA the path writes with fused.rotate_add_many instead: one pass, the sum rounded once.
    """
    rows, fan_in = w0.shape
    b = d.shape[-1]
    d = d.to(w0.dtype)
    if out is None:
        out = torch.empty_like(w0, memory_format=torch.contiguous_format)
    if not (w0.is_contiguous() and out.is_contiguous()) or out.data_ptr() == w0.data_ptr():
        return torch.add(w0, rotate(w0, d), out=out)  # views need dense rows; out must not overwrite w0 early
    blocks = fan_in // b
    d = d.expand(blocks, b, b).contiguous()  # block_share: one block repeated (a copy of b x b blocks, no stride 0)
    torch.bmm(
        w0.view(rows, blocks, b).transpose(0, 1), d.transpose(1, 2), out=out.view(rows, blocks, b).transpose(0, 1)
    )
    return out.add_(w0)


def _rotation_minus_identity(Q: torch.Tensor, neumann_terms: int | None) -> torch.Tensor:
    """R - I, computed directly so that small rotations keep full relative precision."""
    if neumann_terms is not None:
        return neumann_series(Q, neumann_terms)
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device).expand_as(Q)
    # (I - Q)(I + Q)^-1 - I = -2Q (I + Q)^-1
    return torch.linalg.solve(eye + Q, -2 * Q, left=False)
