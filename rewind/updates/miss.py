"""MiSS's format (peft_type MISS): one trained block, tiled over W0 (default and "mini") or mixed with it ("bat")."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Delta, Kind, only


@dataclass
class MissTiled(Delta):
    """MiSS (default and "mini"): the block [r, out] is added to every r-column slice of W0."""

    block: torch.Tensor  # [r, out]

    def merged(self, w0):
        out, fan_in = w0.shape
        r = self.block.shape[0]
        tiled = self.block.to(w0.device).float().t().repeat(1, -(-fan_in // r))[:, :fan_in]
        return w0.float() + tiled

    def shape(self, want):
        return self.block.shape[1], want[1]


@dataclass
class MissBat(Delta):
    """MiSS "bat": each r x r block W_ij of W0 becomes W_ij + W_ij @ B_i + B_i (linear in B, depends on W0)."""

    block: torch.Tensor  # [out / r, r, r]

    def merged(self, w0):
        out, fan_in = w0.shape
        b = self.block.to(w0.device).float()
        r = b.shape[-1]
        w = w0.float().reshape(out // r, r, fan_in // r, r).permute(2, 0, 1, 3)
        return (w + w @ b + b).permute(1, 2, 0, 3).reshape(out, fan_in)

    def shape(self, want):
        return self.block.shape[0] * self.block.shape[1], want[1]


def read(module, parts, config, shapes, shared):
    only(parts, {"miss_block"}, module)
    block = parts["miss_block"]
    mode = config.get("init_weights")
    if mode == "bat":
        return {f"{module}.weight": MissBat(block)}
    if mode == "mini":
        out = shapes[f"{module}.weight"][0]
        block = block.repeat(1, out // block.shape[1])
    return {f"{module}.weight": MissTiled(block)}


def scale(parts, delta, alpha, w0, **options):
    return {"miss_block": parts["miss_block"] * alpha}


KIND = Kind("MISS", read, prefixes=("miss_",), scale=scale)
