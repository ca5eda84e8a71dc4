"""The base checkpoint on disk: its shards and its tensors by name, read lazily (export, diagnose and inspect share it).

Only safetensors are read, tensor by tensor: a base is never loaded whole, and a shard is never read whole to get
one tensor of it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import adapters
from .errors import RewindError

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
