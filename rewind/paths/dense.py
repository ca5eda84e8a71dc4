"""dense: W(alpha) = W0 + alpha * (W1 - W0) on the merged weight, for any method.

For OFT this is the comparison path (a straight line in weight space, leaving the orthogonal group in between);
for additive methods it coincides with `linear`.
"""

from __future__ import annotations

import torch

from .base import PathKind, compute_dtype, computed


class Dense(PathKind):
    name = "dense"
    summary = "W0 + alpha*(W1 - W0) on the merged weight (any method)"

    def __init__(self, items, **options):
        super().__init__(items, **options)
        self._w1 = {id(item): item.delta.merged(item.w0).to(compute_dtype(item.w0)) for item in self.items}

    @classmethod
    def accepts(cls, delta):
        return True

    def _write(self, moving):
        for item, alpha in moving:
            w1 = self._w1[id(item)]
            computed(item, lambda w0, out, w1=w1, a=alpha: torch.lerp(w0, w1, a, out=out))
