"""Parameterization-aware paths between a base model (alpha = 0) and its finetune (alpha = 1).

One module per path kind (`PathKind` in base.py is the protocol); `layerwise` is not a kind but a schedule of
per-layer alphas over any of them (rewind/schedule.py). A method whose update kind brings a path of its own (its
module in rewind/updates/) adds it through its row in the method table.
"""

from __future__ import annotations

from ..errors import RewindError
from .base import Bound, PathKind
from .cayley import Cayley
from .dense import Dense
from .dora import Dora
from .linear import Linear

AUTO = "auto"


def kinds() -> dict[str, type[PathKind]]:
    """Every path kind by name: the ones in this package, then those the method table's update kinds bring."""
    from .. import methods  # here, not above: an update module's own path imports paths.base, i.e. this package

    own = [p for m in methods.METHODS.values() for p in m.kind.paths]
    return {p.name: p for p in (Linear, Cayley, Dora, Dense, *own)}


def resolve(name: str, natural: str) -> type[PathKind]:
    """The path class for `--path NAME`; `auto` is the method's natural path."""
    key = natural if name == AUTO else name
    found = kinds()
    if key not in found:
        raise RewindError(f"--path {name}: choose auto, layerwise or one of {', '.join(found)}")
    return found[key]


__all__ = ["AUTO", "Bound", "PathKind", "kinds", "resolve"]
