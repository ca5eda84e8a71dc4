"""Layer-wise rewinding: one alpha per transformer layer, over any path (a schedule, not a path of its own).

Schedules (alpha is the global `--alpha`; L the number of transformer layers; l = 0 .. L-1 from the input side):
- uniform:  alpha_l = alpha.
- list:     alpha_l given explicitly (L values).
- ramp:     alpha_l = alpha + (1 - alpha) * l / (L - 1)   (LiNeS-style: shallow layers are rewound most).
- balanced: alpha_l = alpha * min(1, m / u_l), u_l the layer's update strength (||dW_l||_F / ||W0_l||_F, or ||Q_l||_F
            for OFT) and m the median over layers: layers that moved more than the median are capped at its size.
Tensors outside the numbered layers (embeddings, final norm, lm_head) always take alpha.

`--path layerwise` is a CLI spelling, not a path kind: the natural path under the `--layers` schedule
(`path_names`).
"""

from __future__ import annotations

import json
import numbers
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import RewindError
from .paths import AUTO

KINDS = ("uniform", "list", "ramp", "balanced")
LAYERWISE = "layerwise"  # a --path choice: the natural path (auto) with the --layers schedule


def path_names(choices: Sequence[str], layers: str | None) -> list[str]:
    """`--path` choices as path names: `layerwise` is `auto` under `--layers`, which it needs."""
    if LAYERWISE in choices and layers is None:
        raise RewindError(f"--path {LAYERWISE} needs --layers ramp|balanced|a,b,...")
    return [AUTO if choice == LAYERWISE else choice for choice in choices]


def _numbers(values, spec) -> tuple[float, ...]:
    """`values` as alphas: numbers only (JSON true/false are ints to Python, and would pass as 1 and 0)."""
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values
    ):
        raise RewindError(
            f"layer schedule {spec!r}: give uniform, ramp, balanced, a comma list of alphas "
            f"or a JSON file with a list of numbers"
        )
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Schedule:
    kind: str = "uniform"
    values: tuple[float, ...] = ()  # for kind "list"

    @classmethod
    def parse(cls, spec: str | Sequence[float] | None) -> Schedule:
        """'ramp' | 'balanced' | 'uniform' | '0.2,0.4,...' | a JSON file holding a list, or a list of floats."""
        if spec is None:
            return cls()
        if not isinstance(spec, str):
            return cls("list", _numbers(list(spec), spec))
        if spec in KINDS and spec != "list":
            return cls(spec)
        text = Path(spec).read_text() if spec.endswith(".json") and Path(spec).is_file() else spec
        try:
            values = json.loads(text) if text.lstrip().startswith("[") else [float(v) for v in text.split(",")]
        except ValueError:
            values = None
        return cls("list", _numbers(values, spec))

    def layer_alphas(self, alpha: float, num_layers: int, strengths: Mapping[int, float] | None = None) -> list[float]:
        if self.kind == "uniform":
            return [alpha] * num_layers
        if self.kind == "list":
            if len(self.values) != num_layers:
                raise RewindError(f"layer schedule has {len(self.values)} alphas; the model has {num_layers} layers")
            return list(self.values)
        if self.kind == "ramp":
            return [alpha + (1 - alpha) * layer / max(num_layers - 1, 1) for layer in range(num_layers)]
        if self.kind == "balanced":
            if not strengths:
                raise RewindError("balanced schedule: the update touches no transformer layer")
            median = statistics.median(strengths.values())
            return [
                alpha * min(1.0, median / strengths[layer]) if strengths.get(layer) else alpha
                for layer in range(num_layers)
            ]
        raise RewindError(f"unknown layer schedule {self.kind!r}; choose one of {', '.join(KINDS)}")

    def describe(self) -> str:
        return self.kind if self.kind != "list" else ",".join(f"{v:g}" for v in self.values)
