"""dora (DoRA's natural path): B scaled by alpha, the magnitude interpolated from the base's row norms.

W(alpha) = m(alpha) / ||V(alpha)||_row * V(alpha), V(alpha) = W0 + alpha*s*B@A, m(alpha) = (1 - alpha)*||W0||_row
+ alpha*m: the row norms peft's DoRA computes (of W0 + s*B@A, per output row). At alpha = 0 it is W0 (m(0) is W0's
own norm: what DoRA's magnitude starts from), at 1 peft's merge, and at every alpha peft's merge of the DoRA adapter
with B(alpha) = alpha*B and that m(alpha), so `--format adapter` writes it exactly.
"""

from __future__ import annotations

import torch

from ..updates.lora import DoRA, base_norms
from .base import PathKind


class Dora(PathKind):
    name = "dora"
    summary = "DoRA with alpha*B and the magnitude interpolated from ||W0||_row (DoRA only)"

    def __init__(self, items, **options):
        super().__init__(items, **options)
        self._state = {id(item): self._prepare(item) for item in self.items}

    @classmethod
    def accepts(cls, delta):
        return isinstance(delta, DoRA)

    @staticmethod
    def _prepare(item):
        # fp32 throughout: every row is divided by its norm, so a bf16 norm's rounding would rescale whole rows
        d, device = item.delta, item.w0.device
        return (
            d.B.to(device, torch.float32),
            d.A.to(device, torch.float32),
            base_norms(item.w0),
            d.magnitude.to(device, torch.float32),
        )

    def _write(self, moving):
        for item, alpha in moving:
            B, A, n0, m = self._state[id(item)]
            v = torch.addmm(item.w0.float(), B, A, alpha=alpha * item.delta.scale)
            factor = torch.lerp(n0, m, alpha) / torch.linalg.vector_norm(v, dim=1)  # exactly m at alpha = 1
            item.out.copy_(v.mul_(factor.unsqueeze(1)))
