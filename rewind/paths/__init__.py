"""Parameterization-aware paths between a base model (alpha = 0) and its finetune (alpha = 1).

One module per path kind; `layerwise` is not a kind but a schedule of per-layer alphas over any of them.
"""

from __future__ import annotations

from ..errors import RewindError
from .base import Bound, Path
from .cayley import Cayley
from .dense import Dense
from .dora import Dora
from .layerwise import Schedule
from .linear import Linear

PATHS: dict[str, type[Path]] = {p.name: p for p in (Linear, Cayley, Dora, Dense)}
AUTO = "auto"


def resolve(name: str, natural: str) -> type[Path]:
    """The path class for `--path NAME`; `auto` is the method's natural path."""
    key = natural if name == AUTO else name
    if key not in PATHS:
        raise RewindError(f"--path {name}: choose auto, layerwise or one of {', '.join(PATHS)}")
    return PATHS[key]


__all__ = ["AUTO", "PATHS", "Bound", "Path", "Schedule", "resolve"]
