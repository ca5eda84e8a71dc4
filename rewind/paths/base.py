"""The path protocol: bind once to (delta, W0, output tensor) triples, then write any point of the path in place.

A path never reloads anything: W0 and the update stay on the device where they were bound, so moving to another
alpha rewrites only the adapted tensors, and alpha -> alpha' -> alpha gives the same bits every time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import RewindError
from ..updates.base import Delta


@dataclass
class Bound:
    name: str
    delta: Delta
    w0: torch.Tensor  # base tensor, on the compute device, in the output's dtype
    out: torch.Tensor  # where W(alpha) goes: a model parameter's data, or an export buffer


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 on CPU, where bf16/fp16 matmuls are slow; the tensor's own dtype on accelerators."""
    return torch.float32 if t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float16) else t.dtype


def computed(item: Bound, compute) -> None:
    """Run compute(w0, out) in the compute dtype; `out` is the destination itself when the dtypes agree."""
    dtype = compute_dtype(item.w0)
    if dtype == item.out.dtype:
        compute(item.w0, item.out)
    else:
        item.out.copy_(compute(item.w0.to(dtype), None))


class PathKind(ABC):
    """One kind of path (linear, cayley, ...): bound once to its tensors, then `write(alphas)` any point."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self, items: Sequence[Bound], **options):
        self.check({item.name: item.delta for item in items})
        self.items = list(items)

    @classmethod
    @abstractmethod
    def accepts(cls, delta: Delta) -> bool: ...

    @classmethod
    def check(cls, deltas: Mapping[str, Delta], method: str = "this update") -> None:
        """RewindError unless this path applies to every delta: callers check before anything moves or is written."""
        for name, delta in deltas.items():
            if not cls.accepts(delta):
                raise RewindError(
                    f"path {cls.name!r} does not apply to {method} ({name}: a {type(delta).__name__} "
                    f"update); try --path auto"
                )

    @torch.no_grad()
    def write(self, alphas: Sequence[float]) -> None:
        """out_i <- W_i(alphas[i]) for every bound tensor; alpha 0 copies W0 (bit-exact base)."""
        if len(alphas) != len(self.items):
            raise ValueError("one alpha per bound tensor")
        moving = []
        for item, alpha in zip(self.items, alphas):
            if alpha == 0:
                item.out.copy_(item.w0)
            else:
                moving.append((item, float(alpha)))
        if moving:
            self._write(moving)

    @abstractmethod
    def _write(self, moving: list[tuple[Bound, float]]) -> None: ...
