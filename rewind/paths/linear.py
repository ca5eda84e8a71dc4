"""linear: W(alpha) = W0 + alpha * dW, for every method whose update is additive in its trained parameter.

LoRA-family factors stay factored (one addmm per tensor; on CUDA a Triton kernel, one launch per shape: fused.py);
IA3 rescales its vector, l(alpha) = 1 + alpha(l - 1); updates that are not linear in their parameter (DoRA, MiSS,
full FT) keep W1 and interpolate, which hits W1 exactly at alpha = 1.
"""

from __future__ import annotations

import torch

from ..updates.ia3 import Scale, ia3_factor
from ..updates.lora import LowRank
from . import fused
from .base import Bound, PathKind, compute_dtype, computed


class Linear(PathKind):
    name = "linear"
    summary = "W0 + alpha*dW (additive methods, full FT)"

    def __init__(self, items, **options):
        super().__init__(items, **options)
        self._state = {id(item): self._prepare(item) for item in self.items}

    @classmethod
    def accepts(cls, delta):
        return delta.additive

    @staticmethod
    def _prepare(item: Bound):
        d, dtype, device = item.delta, compute_dtype(item.w0), item.w0.device
        if isinstance(d, LowRank):
            return d.B.to(device, dtype), d.A.to(device, dtype)
        if isinstance(d, Scale):
            return d.vector.to(device, torch.float32)
        return d.merged(item.w0).to(dtype)

    def _write(self, moving):
        batches = {}  # LoRA-family tensors the fused kernel writes: one launch per shape
        for item, alpha in moving:
            state = self._state[id(item)]
            d = item.delta
            if isinstance(d, LowRank):
                B, A = state
                if fused.enabled(item.w0, item.out):
                    key = (item.w0.shape, item.w0.dtype, item.w0.device, B.shape[1])
                    batches.setdefault(key, []).append((item.w0, B, A, item.out, alpha * d.scale))
                else:
                    scale = alpha * d.scale
                    computed(item, lambda w0, out, B=B, A=A, s=scale: torch.addmm(w0, B, A, alpha=s, out=out))
            elif isinstance(d, Scale):
                factor = ia3_factor(state, alpha).reshape(d._shape(item.w0))
                computed(item, lambda w0, out, f=factor: torch.mul(w0, f.to(w0.dtype), out=out))
            else:
                computed(item, lambda w0, out, w1=state, a=alpha: torch.lerp(w0, w1, a, out=out))
        for jobs in batches.values():
            fused.lowrank_add_many(jobs)
