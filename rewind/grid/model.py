"""Install per-row branches on a Rewinder's resident base, set the points of a batch's rows, remove them again."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from .. import paths
from ..engine import Point, Rewinder
from ..errors import RewindError
from ..paths import Bound
from ..updates.base import Delta
from ..updates.full import Replace
from ..updates.ia3 import Scale
from ..updates.loha import Hadamard
from ..updates.lokr import Kronecker
from ..updates.lora import DoRA, LowRank
from ..updates.miss import MissBat, MissTiled
from ..updates.oft import SCALES
from . import branches as kinds

# Paths a branch computes; any other (BOFT's boft, a path added later) is refused: its points are not a function
# of one alpha that a branch knows.
BRANCHED = ("linear", "dense", "cayley", "dora")
# Updates the linear path writes as lerp(W0, W1, alpha), the Dense branch's line. A kind added later may be written
# otherwise (as LowRank and Scale are), so it is refused until it is listed here or gets a branch.
LERPED = (DoRA, Replace, MissTiled, MissBat, Hadamard, Kronecker)


class PointGrid:
    """What both grids share: `at` puts each batch row at its point for a block of code, `remove` takes their
    forward wrappers off. A grid implements `_set` (validate, then make the rows' points current) and `_clear`."""

    _handles: list | None
    points: tuple[Point, ...] | None = None

    @contextmanager
    def at(
        self, points: Sequence, rows: int | Sequence[int] | torch.Tensor = 1, allow_extrapolation=False
    ) -> Iterator[tuple[Point, ...]]:
        """Batch row i sits at points[index[i]]: `rows` is that index, or k for k rows per point in order."""
        if self._handles is None:
            raise RewindError("grid: removed; install it again")
        if self.points is not None:
            raise RewindError("grid: points are already set; leave the current `at` first")
        points = tuple(points)
        if not points:
            raise RewindError("grid: no points")
        layout = kinds.Rows(row_index(rows, len(points)), len(points))
        try:
            self.points = self._set(points, layout, allow_extrapolation)
            yield self.points
        finally:
            self._clear()
            self.points = None

    def _set(self, points: tuple, rows: kinds.Rows, allow_extrapolation: bool) -> tuple[Point, ...]:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        """Every wrapper off, last-on first (nested wrappers of one module come off in reverse); refused, with
        nothing removed, while another grid's wrappers sit on top of this one's."""
        wrappers = [handle for handle in self._handles or () if isinstance(handle, kinds.Unwrap)]  # hooks don't nest
        outermost = {id(handle.module): handle for handle in wrappers}
        if not all(handle.on_top() for handle in outermost.values()):
            raise RewindError("grid: another grid is installed over this one; remove that one first")
        for handle in reversed(self._handles or ()):
            handle.remove()
        self._handles = None


class Grid(PointGrid):
    """Branches on every module the update touches; the weights stay at the base (alpha 0) all along.

    grid = install(rw)                                   # rw moves to its base first
    with grid.at([0.0, 0.5, 1.0], rows=4):               # 12 rows: 4 at each point, in that order
        logits = rw.model(ids.repeat_interleave(...)).logits
    grid.remove()                                        # hooks gone; the model is its base, bit for bit

    Outside `at` the branches are idle and the model computes its base. Do not move the Rewinder while installed.
    A float is a point of the installed path (uniform); a Point carries its own schedule. All points are validated
    before any branch changes. `remove`: the weights were never touched, so the model is its base exactly.
    """

    def __init__(self, rewinder: Rewinder):
        self.rewinder = rewinder
        self._branches = plan(rewinder)
        rewinder.set(0.0)
        self._handles = [h for branch, _ in self._branches for h in branch.hooks()]

    def _set(self, points, rows, allow_extrapolation) -> tuple[Point, ...]:
        resolved, table = self._alphas(points, allow_extrapolation)
        with torch.no_grad():
            for branch, cols in self._branches:
                branch.prepare(table[:, cols], rows)
        return resolved

    def _clear(self) -> None:
        for branch, _ in self._branches:
            branch.clear()

    def _alphas(self, points, allow_extrapolation) -> tuple[tuple[Point, ...], torch.Tensor]:
        rw, resolved, rows = self.rewinder, [], []
        for p in points:
            if isinstance(p, Point) and (p.path, p.cayley_scale) != (rw.path_name, rw.cayley_scale):
                raise RewindError(f"grid: {p.describe()} is not on the installed path {rw.path_name}")
            alpha, schedule = (p.alpha, p.schedule) if isinstance(p, Point) else (p, None)
            point, alphas = rw.alphas(alpha, schedule, allow_extrapolation)
            resolved.append(point)
            rows.append(alphas)
        return tuple(resolved), torch.tensor(rows, dtype=torch.float64)


def install(rewinder: Rewinder) -> Grid:
    """Per-row branches for the rewinder's update and path on its model (moved to alpha 0 first)."""
    return Grid(rewinder)


def row_index(rows, points: int) -> torch.Tensor:
    if isinstance(rows, int) and not isinstance(rows, bool):
        if rows < 1:
            raise RewindError(f"grid: rows per point must be at least 1, got {rows}")
        return torch.arange(points).repeat_interleave(rows)
    index = torch.as_tensor(rows)
    if index.dim() != 1 or not len(index) or index.is_floating_point() or index.dtype == torch.bool:
        raise RewindError("grid: rows must be a count per point or one point index per batch row")
    if int(index.min()) < 0 or int(index.max()) >= points:
        raise RewindError(f"grid: a row index is outside the {points} points")
    return index.long().cpu()


def plan(rw: Rewinder) -> list[tuple[kinds.Branch, list[int]]]:
    """One branch per updated module tensor, with the columns (tensors in rw.w0's order) whose alphas it reads.

    A tensor shared by several modules (tied embeddings) gets a branch in each of them. A path without a branch is
    refused here, before the Grid moves or hooks anything.
    """
    if rw.path_name not in BRANCHED:
        raise RewindError(f"grid: the {rw.path_name} path has no per-row branch; evaluate its points one by one")
    out = []
    for module, leaves in adapted_modules(rw):
        out += module_branches(rw, module, leaves)
    share_products(rw.model, [branch for branch, _ in out])
    return out


def share_products(model: torch.nn.Module, branches: list[kinds.Branch]) -> None:
    """One A x product for the low-rank updates of sibling modules of one input size (kinds.SharedProduct)."""
    parent = {id(child): id(module) for module in model.modules() for child in module.children()}
    siblings: dict[tuple, list] = {}
    for branch in branches:
        if isinstance(branch, (kinds.LowRank, kinds.Dora)):
            A = branch.update.A
            siblings.setdefault((parent.get(id(branch.module)), A.shape[1], A.dtype, A.device), []).append(branch)
    for group in siblings.values():
        kinds.share_products([branch.update for branch in group])


def adapted_modules(rw: Rewinder) -> list[tuple[torch.nn.Module, dict[str, tuple[str, int]]]]:
    """Every module holding an updated tensor, with its leaves: leaf -> (tensor name, column in rw.w0's order)."""
    params = dict(rw.model.named_parameters(remove_duplicate=False))
    holders: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    for module in rw.model.modules():
        for leaf, p in module._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((module, leaf))
    by_module: dict[int, tuple[torch.nn.Module, dict[str, tuple[str, int]]]] = {}
    for col, name in enumerate(rw.w0):
        for module, leaf in holders[id(params[name])]:
            by_module.setdefault(id(module), (module, {}))[1][leaf] = (name, col)
    return list(by_module.values())


def module_branches(rw: Rewinder, module, leaves: dict[str, tuple[str, int]]) -> list:
    deltas = rw.update.deltas
    if isinstance(module, torch.nn.Embedding) and set(leaves) == {"weight"}:
        name, col = leaves["weight"]
        delta = on_line(rw, name)
        return [(kinds.Dense(module, delta, rw.w0[name], kinds.embedding_product(module)), [col])]
    if not isinstance(module, torch.nn.Linear):
        path_cls = paths.kinds()[rw.path_name]
        bound = {}
        for leaf, (name, _) in leaves.items():
            scratch = torch.empty_like(rw.w0[name])
            bound[leaf] = (
                path_cls([Bound(name, deltas[name], rw.w0[name], scratch)], cayley_scale=rw.cayley_scale),
                scratch,
            )
        return [(kinds.PerPoint(module, bound), [col for _, col in leaves.values()])]
    out = []
    if "weight" in leaves:
        name, col = leaves["weight"]
        out.append((linear_branch(rw, module, name), [col]))
    if "bias" in leaves:
        name, col = leaves["bias"]
        weight = out[0][0] if out else None
        if isinstance(weight, kinds.Scale) and not weight.input_side and isinstance(deltas[name], Scale):
            return out  # IA3 scales the whole output, bias included, with the weight's vector and alpha
        out.append((kinds.Dense(module, on_line(rw, name), rw.w0[name], kinds.bias_product), [col]))
    return out


def linear_branch(rw: Rewinder, module, name: str) -> kinds.Branch:
    """The branch that computes rw's path for this Linear weight. The cayley and dora paths bind only their own
    update kinds; on linear and dense, factored updates stay factored (dense's line W0 + alpha(W1 - W0) is the
    linear one for them), and every other update is a dense delta."""
    w0 = rw.w0[name]
    if rw.path_name == "cayley":
        return kinds.Rotation(module, rw.update.deltas[name], SCALES[rw.cayley_scale])
    if rw.path_name == "dora":
        return kinds.Dora(module, rw.update.deltas[name], w0)
    delta = on_line(rw, name)
    if isinstance(delta, LowRank):
        return kinds.LowRank(module, delta)
    if isinstance(delta, Scale):
        return kinds.Scale(module, delta)
    return kinds.DenseLinear(module, delta, w0)


def on_line(rw: Rewinder, name: str) -> Delta:
    """The delta of `name`, refused unless rw's path writes it as a LowRank, Scale or Dense branch computes it."""
    delta = rw.update.deltas[name]
    if rw.path_name == "dense" or (rw.path_name == "linear" and isinstance(delta, (LowRank, Scale, *LERPED))):
        return delta
    raise RewindError(
        f"grid: {type(delta).__name__} updates ({name}) have no per-row branch on the {rw.path_name} path; "
        "evaluate its points one by one"
    )
