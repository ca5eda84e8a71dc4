"""LoRA's format (peft_type LORA): LoRA, rsLoRA, DoRA and the residual inits (PiSSA, MiLoRA, ...) saved converted.

W1 = W0 + s * B @ A, s = lora_alpha / r (rsLoRA: lora_alpha / sqrt(r); rank_pattern/alpha_pattern honoured); DoRA
normalises each row of that and rescales it by its learned magnitude. `LowRank` also serves AdaLoRA and VeRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import RewindError
from .base import Delta, Kind, only, pattern, product_shape, rank_fields


@dataclass
class LowRank(Delta):
    """W1 = W0 + scale * B @ A (LoRA, rsLoRA, PiSSA/MiLoRA converted, AdaLoRA, VeRA)."""

    B: torch.Tensor  # [out, r]
    A: torch.Tensor  # [r, in]
    scale: float

    def delta(self, device=None) -> torch.Tensor:
        return self.scale * (self.B.to(device).float() @ self.A.to(device).float())

    def merged(self, w0):
        return w0.float() + self.delta(w0.device)

    def strength(self, w0):
        return float(torch.linalg.vector_norm(self.delta(w0.device)))

    def shape(self, want):
        return product_shape(self.B, self.A)


@dataclass
class DoRA(Delta):
    """W1 = m / ||W0 + s B A||_row * (W0 + s B A). Not linear in B: its natural path is `dora` (paths/dora.py);
    `linear` (kept for sweeps that recorded it) and `dense` are the straight line to W1."""

    B: torch.Tensor
    A: torch.Tensor
    scale: float
    magnitude: torch.Tensor  # [out]

    def merged(self, w0):
        v = w0.float() + self.scale * (self.B.to(w0.device).float() @ self.A.to(w0.device).float())
        return (self.magnitude.to(w0.device).float() / torch.linalg.vector_norm(v, dim=1)).unsqueeze(1) * v

    def shape(self, want):
        return product_shape(self.B, self.A)


def base_norms(w0: torch.Tensor) -> torch.Tensor:
    """||W0||_row in fp32: the magnitude a DoRA adapter starts from (peft initialises m to ||W0 + s*B0@A0||_row
    with B0 = 0)."""
    return torch.linalg.vector_norm(w0.float(), dim=1)


def magnitude(delta: DoRA, w0: torch.Tensor, alpha: float) -> torch.Tensor:
    """DoRA's magnitude on its path: m(alpha) = (1 - alpha)*||W0||_row + alpha*m, fp32 (torch.lerp: exactly m at
    alpha = 1)."""
    return torch.lerp(base_norms(w0), delta.magnitude.to(w0.device, torch.float32), alpha)


def read(module, parts, config, shapes, shared):
    only(parts, {"lora_A.weight", "lora_B.weight", "lora_magnitude_vector"}, module)
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise RewindError("LoRA adapters with trained biases are not supported")
    r = pattern(config, "rank_pattern", module, config["r"])
    alpha = pattern(config, "alpha_pattern", module, config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    B, A = parts["lora_B.weight"], parts["lora_A.weight"]
    if config.get("fan_in_fan_out"):
        raise RewindError("fan_in_fan_out (GPT-2 Conv1D) adapters are not supported")
    if "lora_magnitude_vector" in parts:
        return {f"{module}.weight": DoRA(B, A, scale, parts["lora_magnitude_vector"])}
    return {f"{module}.weight": LowRank(B, A, scale)}


def scale(parts, delta, alpha, w0, **options):
    """B scaled by alpha; DoRA's magnitude moved to m(alpha) next to it (its `dora` path, docs/paths.md)."""
    out = {"lora_B.weight": parts["lora_B.weight"] * alpha}
    if "lora_magnitude_vector" in parts:
        out["lora_magnitude_vector"] = magnitude(delta, w0(), alpha)
    return out


KIND = Kind("LORA", read, prefixes=("lora_",), fields=rank_fields("lora_alpha"), scale=scale)
