"""The base checkpoint on disk, and a point of a finetune planned against it: what export, diagnose and inspect share.

`BaseTensors` reads a base's safetensors tensor by tensor (a base is never loaded whole, nor a shard read whole for
one tensor of it). `Plan.of(Finetune(...))` reads the adapter against it and gives every updated tensor its alpha;
`Plan.moved` computes W(alpha) of one tensor with the path classes that move the resident model, so what export
writes and what diagnose measures are the weights a sweep evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import adapters, models, paths
from .engine import Point, layer_strengths, tensor_alphas
from .errors import RewindError
from .paths import Bound
from .schedule import Schedule

INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"


def shards(base_dir: Path) -> list[Path]:
    """The base's safetensors files, in the index's order (a sharded checkpoint) or the one file."""
    index = base_dir / INDEX
    if index.is_file():
        return _indexed(base_dir, index)
    single = base_dir / SINGLE
    if single.is_file():
        return [single]
    raise RewindError(f"{base_dir}: no safetensors weights (rewind reads no pickle checkpoints)")


def _indexed(base_dir: Path, index: Path) -> list[Path]:
    weight_map = adapters.load_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise RewindError(f"{index}: no weight_map; the checkpoint index is broken")
    found = []
    for name in dict.fromkeys(weight_map.values()):
        # Shards are files of the base dir itself: a name like ../../x or /etc/x is refused, never read.
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise RewindError(f"{index}: shard {name!r} is not a file name in {base_dir}; the index is broken")
        if not (base_dir / name).is_file():
            raise RewindError(f"{index}: shard {name} is missing from {base_dir}")
        found.append(base_dir / name)
    return found


class BaseTensors:
    """A base checkpoint dir: its config.json, its shards, and each tensor by name (`tensors(name)`), read without
    loading whole shards. It is the base an adapter is read against (`adapters.read`)."""

    def __init__(self, base_dir: Path):
        self.dir = Path(base_dir)
        self.config = adapters.load_json(self.dir / "config.json")
        self.shards = shards(self.dir)
        self._where: dict[str, Path] = {}
        self.shapes: dict[str, torch.Size] = {}
        for shard in self.shards:
            self._scan(shard)

    def _scan(self, shard: Path) -> None:
        from safetensors import safe_open

        try:
            with safe_open(shard, "pt") as f:
                for name in f.keys():
                    self._where[name] = shard
                    self.shapes[name] = torch.Size(f.get_slice(name).get_shape())
        except Exception as exc:  # broad: SafetensorError, OSError: the shard is what matters
            raise RewindError(
                f"{shard}: not a readable safetensors file ({str(exc).splitlines()[0]}); the base "
                f"checkpoint is damaged: re-download or re-save it"
            ) from exc

    def __call__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self._where[name], "pt") as f:
            return f.get_tensor(name)

    @property
    def num_layers(self) -> int:
        """Transformer layers in the base's config (0 when it names none)."""
        return int(self.config.get("num_hidden_layers") or 0)


@dataclass(frozen=True)
class Finetune:
    """A base, an adapter, and one point on the adapter's path: what export writes and diagnose compares with the
    base (alpha 0)."""

    adapter: str | Path  # a peft adapter dir or a full checkpoint dir
    base: str | Path | None = None  # alias, hub id or dir; None: the default base
    alpha: float = 1.0  # 0 = the base, 1 = the finetune
    path: str = paths.AUTO  # a path kind, or auto: the method's natural path
    schedule: Schedule = field(default_factory=Schedule)  # per-layer alphas (--layers)
    cayley_scale: str = "linear"  # cayley path: generator scale s(alpha) = alpha or sqrt(alpha)
    init_adapter: str | Path | None = None  # step-0 adapter of a residual-init LoRA saved unconverted
    allow_extrapolation: bool = False  # alphas outside [0, 1] allowed


@dataclass
class Plan:
    """A finetune's point planned against its base checkpoint: every input checked, every updated tensor's alpha
    decided. Nothing is loaded but the adapter; base tensors are read when asked for."""

    finetune: Finetune
    tensors: BaseTensors
    update: adapters.Update
    point: Point
    alphas: dict[str, float]  # updated tensor -> its alpha

    @classmethod
    def of(cls, finetune: Finetune, tensors: BaseTensors | None = None):
        """Read the adapter against the base (`tensors`, else the finetune's base), check that the path applies and
        give each updated tensor its alpha. Touches nothing on disk."""
        tensors = tensors or BaseTensors(models.local_dir(finetune.base))
        update = adapters.read(finetune.adapter, tensors, finetune.init_adapter)
        kind = paths.resolve(finetune.path, update.natural_path)
        kind.check(update.deltas, update.method.name)
        point = Point(kind.name, float(finetune.alpha), finetune.schedule or Schedule(), finetune.cayley_scale)
        strengths = layer_strengths(update, tensors) if point.schedule.kind == "balanced" else None
        names = list(update.deltas)
        alphas = tensor_alphas(names, point, tensors.num_layers, strengths, finetune.allow_extrapolation)
        return cls(finetune, tensors, update, point, dict(zip(names, alphas)))

    @property
    def base(self) -> str:
        """The base as a model card names it (an alias's hub id)."""
        return models.hub_id(self.finetune.base)

    @property
    def base_dir(self) -> Path:
        return self.tensors.dir

    @property
    def shards(self) -> list[Path]:
        return self.tensors.shards

    @property
    def adapter(self) -> Path:
        return Path(self.finetune.adapter)

    @property
    def init_adapter(self) -> Path | None:
        return Path(self.finetune.init_adapter) if self.finetune.init_adapter else None

    @property
    def allow_extrapolation(self) -> bool:
        return self.finetune.allow_extrapolation

    def layer_alphas(self) -> dict[int, float]:
        """Each transformer layer's alpha (of its updated tensors)."""
        return {layer: a for name, a in self.alphas.items() if (layer := adapters.layer_of(name)) is not None}

    def moved(self, name: str, w0: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W(alpha) of the updated tensor `name`: the point's path writing from `w0` into a new tensor on w0's device,
        in `dtype` (default w0's), computed in w0's dtype and rounded once."""
        out = torch.empty(w0.shape, dtype=dtype or w0.dtype, device=w0.device)
        kind = paths.resolve(self.point.path, self.update.natural_path)
        bound = Bound(name, self.update.deltas[name], w0, out)
        kind([bound], cayley_scale=self.point.cayley_scale).write([self.alphas[name]])
        return out
