"""Per-row points from each point's own weights: the updated tensors written at every point of a pass by the paths
themselves (as a point-by-point sweep writes them) and kept in a stack, one copy per point; each updated Linear then
runs all rows in one batched product, every row with its point's weight.

Exact as the in-place model by construction, for any update and any path, and points of several paths share one
pass. The price is memory: one copy of the updated tensors per point (`bytes_per_point`). It suits models whose
copies fit many times over, such as the embedded SmolLM2 (about 0.2 GB a point in bf16). There a decoding step is
bound by host work per op, and a branch's extra ops per module cost more than its products (bench/README.md). On a
7B model the copies do not fit, and every point would read its own weights again: the branches (model.py) read W0
once for all points.

    stack = install(rewinder_of, first)                  # rewinder_of(path) -> that path's Rewinder on the model
    with stack.at([Point("cayley", 0.5), Point("dense", 0.5)], rows=4):
        logits = model(input_ids=ids.repeat(2, 1)).logits
    stack.remove()
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..engine import Point, Rewinder
from ..errors import RewindError
from .branches import Branch, Rows
from .model import PointGrid, adapted_modules


class Stacked(PointGrid):
    """`at(points, rows)`: the stacks are written at the first `at` of these points and kept for the next; the
    model's weights end at the base. `remove` frees the stacks too."""

    def __init__(self, rewinder_of: Callable[[str], Rewinder], first: Rewinder):
        self.rewinder_of, self.first = rewinder_of, first
        self._linears = plan(first)
        self._handles = [h for linear in self._linears for h in linear.hooks()]
        self._filled: tuple | None = None  # the points the stacks hold, in order

    def bytes_per_point(self) -> int:
        return sum(linear.bytes_per_point() for linear in self._linears)

    def reserved_bytes(self) -> int:
        """What the stacks hold now (`reserve`): free memory plus this is what a larger reserve may take."""
        return sum(stack.nbytes for linear in self._linears for stack in linear.stacks.values())

    def reserve(self, points: int) -> None:
        """Stacks for `points` points, allocated now: a pass plans its rows from the memory left after them."""
        for linear in self._linears:
            linear.reserve(points)

    def _set(self, points, rows, allow_extrapolation) -> tuple[Point, ...]:
        self._fill(points, allow_extrapolation)
        for linear in self._linears:
            linear.set_rows(rows)
        return points

    def _clear(self) -> None:
        for linear in self._linears:
            linear.clear()

    def _fill(self, points: tuple[Point, ...], allow_extrapolation: bool) -> None:
        key = (points, allow_extrapolation)
        if key == self._filled:
            return
        self._filled = None
        self.reserve(len(points))
        try:
            for p, point in enumerate(points):
                rewinder = self.rewinder_of(point.path)
                if point.cayley_scale != rewinder.cayley_scale:
                    raise RewindError(f"grid: {point.describe()} is not on the {rewinder.path_name} path bound here")
                rewinder.set(point.alpha, point.schedule, allow_extrapolation)
                for linear in self._linears:
                    linear.keep(p)
        finally:
            self.first.set(0.0)
        self._filled = key

    def remove(self) -> None:
        super().remove()
        self._linears, self._filled = [], None


def install(rewinder_of: Callable[[str], Rewinder], first: Rewinder) -> Stacked:
    """Stacks for the update bound by `first` (any of the model's rewinders: all bind the same tensors)."""
    return Stacked(rewinder_of, first)


def plan(rw: Rewinder) -> list[StackedLinear]:
    """A StackedLinear per module holding an updated tensor; refused unless each is a Linear's weight or bias."""
    out = []
    for module, leaves in adapted_modules(rw):
        if not isinstance(module, torch.nn.Linear):
            names = ", ".join(name for name, _ in leaves.values())
            raise RewindError(f"grid: {names} is held by a {type(module).__name__}; stacks take Linear weights only")
        out.append(StackedLinear(module, set(leaves)))
    return out


class StackedLinear(Branch):
    """A Linear whose updated leaves (weight, bias) each row reads from its point's copy: one baddbmm for rows
    blocked by point, one product per point otherwise."""

    def __init__(self, module: torch.nn.Linear, leaves: set[str]):
        super().__init__(module)
        self.leaves = leaves
        self.stacks: dict[str, torch.Tensor] = {}

    def bytes_per_point(self) -> int:
        return sum(getattr(self.module, leaf).nbytes for leaf in self.leaves)

    def reserve(self, points: int) -> None:
        for leaf in self.leaves:
            value = getattr(self.module, leaf)
            if leaf not in self.stacks or len(self.stacks[leaf]) < points:
                self.stacks.pop(leaf, None)  # freed before the larger one is taken
                self.stacks[leaf] = torch.empty(points, *value.shape, dtype=value.dtype, device=value.device)

    def keep(self, p: int) -> None:
        for leaf in self.leaves:
            self.stacks[leaf][p].copy_(getattr(self.module, leaf))

    def set_rows(self, rows: Rows) -> None:
        self.rows, points, module = rows, rows.points, self.module
        self._weights = self.stacks["weight"][:points] if "weight" in self.leaves else None
        if "bias" in self.leaves:
            self._bias = self.stacks["bias"][:points]
        else:
            self._bias = None if module.bias is None else module.bias.expand(points, -1)
        if rows.blocked:  # [points, in, out] and [points, 1, out]: baddbmm's operands, made once per pass
            weight = self._weights if self._weights is not None else module.weight.expand(points, -1, -1)
            self._transposed = weight.transpose(1, 2)
            self._bias3 = None if self._bias is None else self._bias.unsqueeze(1)

    def _forward_output(self, x, *args, **kwargs):
        if self.rows is None:
            return self._inner(x, *args, **kwargs)
        self._check(x)
        if not self.rows.blocked:
            return self._per_point(x)
        grouped = x.reshape(self.rows.points, -1, x.shape[-1])
        if self._bias3 is None:
            y = torch.bmm(grouped, self._transposed)
        else:
            y = torch.baddbmm(self._bias3, grouped, self._transposed)
        return y.view(*x.shape[:-1], y.shape[-1])

    def _per_point(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty(*x.shape[:-1], self.module.out_features)
        for p, idx in self.rows.groups(x.device):
            weight = self._weights[p] if self._weights is not None else self.module.weight
            out[idx] = F.linear(x[idx], weight, None if self._bias is None else self._bias[p])
        return out
