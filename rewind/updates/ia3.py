"""IA3's format (peft_type IA3): a learned vector l rescales W0's rows ([out, 1]) or, for feed-forward modules, its
columns ([1, in]); peft's merge scales a bias with the rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Delta, Kind, only


@dataclass
class Scale(Delta):
    """W1 = W0 * l, with l broadcast over rows ([out, 1]) or, for feed-forward modules, columns ([1, in])."""

    vector: torch.Tensor

    def factor(self, alpha: float) -> torch.Tensor:
        return ia3_factor(self.vector.float(), alpha)

    def merged(self, w0):
        return w0.float() * self.factor(1.0).to(w0.device).reshape(self._shape(w0))

    def _shape(self, w0):
        return self.vector.shape if w0.dim() == 2 else (-1,)  # a bias scales like the rows

    def shape(self, want):
        return want if self.vector.numel() in want else tuple(self.vector.shape)


def ia3_factor(vector: torch.Tensor, alpha: float) -> torch.Tensor:
    """IA3's vector at alpha: l(alpha) = 1 + alpha (l - 1), so alpha 0 is the identity and 1 the trained l."""
    return 1 + alpha * (vector - 1)


def read(module, parts, config, shapes, shared):
    only(parts, {"ia3_l"}, module)
    vector = parts["ia3_l"]
    deltas = {f"{module}.weight": Scale(vector)}
    feedforward = vector.shape[0] == 1  # peft stores [1, in] for feed-forward modules, [out, 1] otherwise
    if not feedforward and f"{module}.bias" in shapes:
        deltas[f"{module}.bias"] = Scale(vector)  # peft's merge scales the bias with the output rows
    return deltas


def scale(parts, delta, alpha, w0, **options):
    return {"ia3_l": ia3_factor(parts["ia3_l"], alpha)}


KIND = Kind("IA3", read, prefixes=("ia3_",), scale=scale)
