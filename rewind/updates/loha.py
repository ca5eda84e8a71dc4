"""LoHa's format (peft_type LOHA, LyCORIS): the Hadamard product of two low-rank updates.

W1 = W0 + s * (w1_a @ w1_b) * (w2_a @ w2_b), s = alpha / r (rank_pattern/alpha_pattern honoured), as peft 0.21's
loha/layer.py merges a Linear (rank dropout only acts in training). Linear in w1_a, so its natural path is
`linear`, and alpha * w1_a is an ordinary LoHa adapter at every alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Delta, Kind, only, pattern, product_shape, rank_fields

LEAVES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


@dataclass
class Hadamard(Delta):
    """W1 = W0 + scale * (w1_a @ w1_b) * (w2_a @ w2_b)."""

    w1_a: torch.Tensor  # [out, r]
    w1_b: torch.Tensor  # [r, in]
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    scale: float

    def delta(self, device=None) -> torch.Tensor:
        w1_a, w1_b, w2_a, w2_b = (t.to(device).float() for t in (self.w1_a, self.w1_b, self.w2_a, self.w2_b))
        return (w1_a @ w1_b) * (w2_a @ w2_b) * self.scale

    def merged(self, w0):
        return w0.float() + self.delta(w0.device)

    def strength(self, w0):
        return float(torch.linalg.vector_norm(self.delta(w0.device)))

    def shape(self, want):
        first = product_shape(self.w1_a, self.w1_b, "hada_w1_a, hada_w1_b")
        second = product_shape(self.w2_a, self.w2_b, "hada_w2_a, hada_w2_b")
        if first != second:
            raise ValueError(f"the two products are {first} and {second}")
        return first


def read(module, parts, config, shapes, shared):
    only(parts, set(LEAVES), module)  # hada_t1/t2 belong to conv layers (use_effective_conv2d)
    r = pattern(config, "rank_pattern", module, config["r"])
    alpha = pattern(config, "alpha_pattern", module, config["alpha"])
    return {f"{module}.weight": Hadamard(*(parts[leaf] for leaf in LEAVES), alpha / r)}


def scale(parts, delta, alpha, w0, **options):
    return {"hada_w1_a": parts["hada_w1_a"] * alpha}


KIND = Kind("LOHA", read, prefixes=("hada_",), fields=rank_fields("alpha"), scale=scale)
