"""A full finetune (a model dir, read by adapters.py) and peft's modules_to_save: the trained tensor, stored whole."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Delta, Kind


@dataclass
class Replace(Delta):
    """Full finetune or peft's modules_to_save: W1 is stored whole."""

    w1: torch.Tensor

    def merged(self, w0):
        return self.w1.to(w0.device).float()

    def shape(self, want):
        return tuple(self.w1.shape)


KIND = Kind(None, no_adapter="a full finetune has no adapter")
