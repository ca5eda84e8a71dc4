"""LoKr's format (peft_type LOKR, LyCORIS): a Kronecker product of two factors, each stored whole or low-rank.

W1 = W0 + s * kron(w1, w2), w1 = lokr_w1 or lokr_w1_a @ lokr_w1_b, w2 = lokr_w2 or lokr_w2_a @ lokr_w2_b, s = alpha
/ r (rank_pattern/alpha_pattern honoured), as peft 0.21's lokr/layer.py merges a Linear (rank dropout only acts in
training; decompose_both and decompose_factor only decide which factors are stored, which the reader takes from the
file). Linear in w1, so its natural path is `linear`, and alpha * w1 is an ordinary LoKr adapter at every alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Delta, Kind, only, pattern, product_shape, rank_fields

LEAVES = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"}


@dataclass
class Kronecker(Delta):
    """W1 = W0 + scale * kron(w1, w2); each factor is one tensor, or two whose product it is."""

    w1: tuple[torch.Tensor, ...]
    w2: tuple[torch.Tensor, ...]
    scale: float

    def delta(self, device=None) -> torch.Tensor:
        return torch.kron(_product(self.w1, device), _product(self.w2, device)) * self.scale

    def merged(self, w0):
        return w0.float() + self.delta(w0.device)

    def strength(self, w0):
        return float(torch.linalg.vector_norm(self.delta(w0.device)))

    def shape(self, want):
        (a, c), (b, d) = _shape(self.w1, "lokr_w1"), _shape(self.w2, "lokr_w2")
        return a * b, c * d


def _product(factor: tuple[torch.Tensor, ...], device) -> torch.Tensor:
    tensors = [t.to(device).float() for t in factor]
    return tensors[0] if len(tensors) == 1 else tensors[0] @ tensors[1]


def _shape(factor: tuple[torch.Tensor, ...], name: str) -> tuple[int, int]:
    if len(factor) == 2:
        return product_shape(*factor, f"{name}_a, {name}_b")
    if factor[0].dim() != 2:
        raise ValueError(f"{name} is {tuple(factor[0].shape)} (expected a matrix)")
    return tuple(factor[0].shape)


def _factor(parts: dict, name: str) -> tuple[torch.Tensor, ...]:
    """A factor as peft's get_delta_weight takes it: whole if stored whole, else its two low-rank parts."""
    if name in parts:
        return (parts[name],)
    return parts[f"{name}_a"], parts[f"{name}_b"]


def read(module, parts, config, shapes, shared):
    only(parts, LEAVES, module)  # lokr_t2 belongs to conv layers (use_effective_conv2d)
    r = pattern(config, "rank_pattern", module, config["r"])
    alpha = pattern(config, "alpha_pattern", module, config["alpha"])
    return {f"{module}.weight": Kronecker(_factor(parts, "lokr_w1"), _factor(parts, "lokr_w2"), alpha / r)}


def scale(parts, delta, alpha, w0, **options):
    leaf = "lokr_w1" if "lokr_w1" in parts else "lokr_w1_a"
    return {leaf: parts[leaf] * alpha}


KIND = Kind("LOKR", read, prefixes=("lokr_",), fields=rank_fields("alpha"), scale=scale)
