"""A resident model that moves along a path in place: load once, then `set(alpha)` as often as you like.

rw = rewind.engine.open(base="smollm2", adapter="./oft-math")      # or attach(model, adapter_dir)
rw.set(0.7)                         # rw.model now has W(0.7); nothing reloaded
rw.set(0.5, Schedule.parse("ramp"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from . import adapters, models, paths
from .errors import RewindError
from .paths import Bound
from .schedule import Schedule


@dataclass(frozen=True)
class Point:
    """Where on which path: what sweeps record and exports reproduce."""

    path: str
    alpha: float
    schedule: Schedule = field(default_factory=Schedule)
    cayley_scale: str = "linear"

    def describe(self) -> str:
        extra = "" if self.schedule.kind == "uniform" else f", layers={self.schedule.describe()}"
        if self.path == "cayley" and self.cayley_scale != "linear":
            extra += f", scale={self.cayley_scale}"
        return f"{self.path}(alpha={self.alpha:g}{extra})"


def check_alphas(alphas: Sequence[float], allow_extrapolation: bool) -> None:
    for a in alphas:
        if not math.isfinite(a):
            raise RewindError(f"alpha {a} is not a finite number")
        if not allow_extrapolation and not 0 <= a <= 1:
            raise RewindError(
                f"alpha {a:g} is outside [0, 1] (0 = base, 1 = finetune): pass --allow-extrapolation to go beyond"
            )


def layer_strengths(update: adapters.Update, base_tensor) -> dict[int, float]:
    """Per-layer update size for the balanced schedule: ||dW_l||_F / ||W0_l||_F, or a generator's own norm for kinds
    whose strength is not relative to W0 (OFT: ||Q_l||_F)."""
    sums: dict[int, list[float]] = {}
    for name, delta in update.deltas.items():
        layer = adapters.layer_of(name)
        if layer is None:
            continue
        w0 = base_tensor(name)
        acc = sums.setdefault(layer, [0.0, 0.0])
        acc[0] += delta.strength(w0) ** 2
        acc[1] += float(torch.linalg.vector_norm(w0.float())) ** 2 if delta.relative else 0.0
    return {layer: math.sqrt(d) / math.sqrt(w) if w else math.sqrt(d) for layer, (d, w) in sums.items()}


def tensor_alphas(
    names: Sequence[str],
    point: Point,
    num_layers: int,
    strengths: Mapping[int, float] | None = None,
    allow_extrapolation: bool = False,
) -> list[float]:
    """One alpha per updated tensor for a point (uniform, or a per-layer schedule)."""
    per_layer = point.schedule.layer_alphas(point.alpha, num_layers, strengths)
    check_alphas([point.alpha, *per_layer], allow_extrapolation)
    out = []
    for name in names:
        layer = adapters.layer_of(name)
        out.append(point.alpha if layer is None or layer >= num_layers else per_layer[layer])
    return out


class Rewinder:
    """Binds an Update to a live model: keeps W0 and the update on the model's device, rewrites in place."""

    def __init__(
        self,
        model: torch.nn.Module,
        update: adapters.Update,
        path: str = "auto",
        cayley_scale: str = "linear",
        tokenizer=None,
        w0: Mapping[str, torch.Tensor] | None = None,
    ):
        """`w0`: base tensors already kept by another Rewinder of the same model (several paths, one copy)."""
        self.model, self.update, self.tokenizer = model, update, tokenizer
        self.num_layers = int(model.config.num_hidden_layers)
        params = dict(model.named_parameters(remove_duplicate=False))
        w0 = w0 or {}
        items = [
            Bound(name, delta, w0[name] if name in w0 else params[name].detach().clone(), params[name].data)
            for name, delta in update.deltas.items()
        ]
        path_cls = paths.resolve(path, update.natural_path)
        self.path_name, self.cayley_scale = path_cls.name, cayley_scale
        self._path = path_cls(items, cayley_scale=cayley_scale)
        self.w0 = {item.name: item.w0 for item in items}
        self._strengths: dict[int, float] | None = None
        self.point: Point | None = None

    def alphas(
        self, alpha: float = 1.0, schedule: Schedule | None = None, allow_extrapolation: bool = False
    ) -> tuple[Point, list[float]]:
        """The point at alpha and one alpha per bound tensor (in `w0`'s order), validated; nothing is written."""
        point = Point(self.path_name, float(alpha), schedule or Schedule(), self.cayley_scale)
        if point.schedule.kind == "balanced" and self._strengths is None:
            self._strengths = layer_strengths(self.update, self.w0.__getitem__)
        return point, tensor_alphas(list(self.w0), point, self.num_layers, self._strengths, allow_extrapolation)

    def set(self, alpha: float = 1.0, schedule: Schedule | None = None, allow_extrapolation: bool = False) -> Point:
        """Move the model to alpha (per-layer with a schedule). Validated before anything is written."""
        point, alphas = self.alphas(alpha, schedule, allow_extrapolation)
        self._path.write(alphas)
        self.point = point
        return point


class ModelTensors:
    """A loaded model as the base an adapter is read against (`adapters.read`): its parameters' shapes, its config,
    and W0 by name: `w0`'s copy where a Rewinder keeps one (the model may stand at another point), else the parameter
    itself."""

    def __init__(self, model: torch.nn.Module, w0: Mapping[str, torch.Tensor] | None = None):
        self._params = dict(model.named_parameters(remove_duplicate=False))
        self._w0 = w0 or {}
        self.shapes = {name: p.shape for name, p in self._params.items()}
        self.config = model.config.to_dict() if hasattr(model, "config") else None

    def __call__(self, name: str) -> torch.Tensor:
        return self._w0[name] if name in self._w0 else self._params[name].detach()


def attach(
    model: torch.nn.Module, adapter, path: str = "auto", init_adapter=None, cayley_scale: str = "linear", tokenizer=None
) -> Rewinder:
    """Read `adapter` against `model`'s own weights and bind it. The model is left at alpha = 0 (its base)."""
    update = adapters.read(adapter, ModelTensors(model), init_adapter)
    return Rewinder(model, update, path, cayley_scale, tokenizer)


def open(
    base=None,
    adapter=None,
    path: str = "auto",
    device: str | None = None,
    dtype: str = "auto",
    init_adapter=None,
    cayley_scale: str = "linear",
) -> Rewinder:  # shadows the builtin: reads like it
    """Load the base (alias, hub id or dir) onto `device` and attach the adapter."""
    if adapter is None:
        raise RewindError("--adapter is required")
    model, tokenizer = models.load_base(base, device, dtype)
    return attach(model, adapter, path, init_adapter, cayley_scale, tokenizer)
