"""Which points of a sweep are evaluated together in one grid pass (issue 16), and which tasks grid.

`--batch-points N` groups up to N points of one path (`auto`: all of them); `1` evaluates point by point. The base
and final points are alpha 0 and 1 of the sweep's first path and join its group; a searched point is a point of its
path with its own per-layer alphas and joins that path's group; a training checkpoint is on no path and runs alone.
A path without a per-row branch (rewind/grid/model.py) falls back to point by point in the session.

Two kinds of grid (the session picks): where one copy of the updated tensors per point of the pass fits in
STACK_SHARE of free memory, a stacked grid (rewind/grid/stacked.py) runs each row on its point's own weights, any
path and any update, so the points of all paths share one pass (a grid pass decodes until its slowest point stops:
one pass, one wait); else the branches, one path per pass.

Which tasks grid, with N given: all of them. With `auto`, from measurements (bench/README.md), only on a GPU:
- generation tasks always: a decoding step reads every weight for few rows, so more rows cost little (the issue's
  H200 probe: an 11-point generation pass 3.0x to 5.8x faster);
- loglikelihood tasks (one forward, no decoding) only on a model of at most SMALL_MODEL parameters: there the
  forward is compute-bound already, so the grid's extra rows cost their full price plus the branches (11 points
  measured 1.2x on SmolLM2-135M, 0.81x on Qwen2.5-7B).
On a CPU `auto` is point by point: the CPU is compute-bound at any batch, and a grid pass decodes until its slowest
point stops (a base that rambles to the token limit holds back finetuned points that answer in a few tokens).
`make demo`'s sweep on 2 cores took 481 s in grid mode and 361 s point by point, with identical scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import RewindError
from .results import Point

AUTO = "auto"
# Parameters up to which loglikelihood tasks grid on a GPU under `auto`: between the two shapes measured (135M
# gained, 7B lost); no size in between was measured, so the line is a round number between them.
SMALL_MODEL = 1_000_000_000
# Share of the free memory a stacked grid's weight copies may take (one copy of the updated tensors per point of a
# pass); where they would take more, the branches grid, one path at a time.
STACK_SHARE = 0.25


def parse(value: int | str) -> int | str:
    """--batch-points: a count of at least 1, or auto."""
    if value == AUTO:
        return AUTO
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or str(value).strip() != str(count):
        raise RewindError(f"--batch-points {value}: give a number of points (1: point by point) or auto")
    return count


def path_of(point: Point, first_path: str) -> str | None:
    """The path whose grid computes `point`; None: it runs alone."""
    if point.kind in ("base", "final"):
        return first_path
    if point.kind in ("path", "searched"):
        return point.path
    return None


def points_per_pass(batch_points: int | str, device) -> int | str:
    """--batch-points as it applies on `device`: auto is point by point (1) off a GPU (module docstring)."""
    return 1 if batch_points == AUTO and device.type != "cuda" else batch_points


def groups(points: Iterable[Point], batch_points: int | str, first_path: str, mixed=False) -> list[list[Point]]:
    """`points` in groups of one path (`mixed`: of any path, as a stacked grid takes them), up to batch_points
    each, in the order of their first point."""
    size = None if batch_points == AUTO else int(batch_points)
    by_path: dict[str | None, list[Point]] = {}
    alone: list[list[Point]] = []
    for point in points:
        path = path_of(point, first_path) if size != 1 else None
        path = "any" if mixed and path is not None else path
        if path is None:
            alone.append([point])
        else:
            by_path.setdefault(path, []).append(point)
    out = []
    for members in by_path.values():
        step = size or len(members)
        out += [members[i : i + step] for i in range(0, len(members), step)]
    return out + alone


def grids(output_types: Sequence[str], model, batch_points: int | str) -> bool:
    """Whether a task whose lm-eval tasks have `output_types` runs as a grid (see the module docstring)."""
    if batch_points != AUTO:
        return True
    if model.device.type != "cuda":
        return False
    return set(output_types) == {"generate_until"} or sum(p.numel() for p in model.parameters()) <= SMALL_MODEL
