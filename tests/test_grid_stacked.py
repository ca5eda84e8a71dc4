"""Stacked grids (rewind/grid/stacked.py): each row at its point through per-point weight copies, checked in fp32
against the in-place model at that point, for every update and path the branches take and the ones they refuse,
and for points of two paths in one pass."""

from __future__ import annotations

import pytest
import torch
from test_grid import CASES, MIXED_ROWS, TOL, _biased_base, _ids, _rewinder, _wrapped
from tiny import rel_err, tiny_base

from rewind.engine import Point, Rewinder
from rewind.errors import RewindError
from rewind.grid import stacked
from rewind.schedule import Schedule

# Every CASES kind whose updated tensors are all Linear weights and biases (full FT also moves embeddings and
# norms), and paths the branches refuse (boft's own path).
STACKED_CASES = [(k, p) for k, p in CASES if k != "full"] + [("boft", "boft"), ("boft-butterfly", "boft")]


@pytest.fixture(scope="module")
def base():
    return tiny_base()


def _reference(rewinders: dict[str, Rewinder], points, ids):
    out = []
    for point in points:
        rewinders[point.path].set(point.alpha, point.schedule, allow_extrapolation=True)
        out.append(rewinders[point.path].model(input_ids=ids).logits)
    next(iter(rewinders.values())).set(0.0)
    return out


@torch.no_grad()
def _check(rewinders: dict[str, Rewinder], points, layouts):
    model = next(iter(rewinders.values())).model
    ids = _ids(len(layouts[0]))
    reference = _reference(rewinders, points, ids)
    assert min(rel_err(r, reference[0]) for r in reference[1:]) > 1e-3, "points too close to tell apart: test void"
    base_logits = model(input_ids=ids).logits
    grid = stacked.install(rewinders.__getitem__, next(iter(rewinders.values())))
    for layout in layouts:
        with grid.at(points, rows=layout, allow_extrapolation=True):
            out = model(input_ids=ids).logits
        for row, p in enumerate(layout):
            assert rel_err(out[row], reference[p][row]) <= TOL, (row, p, rel_err(out[row], reference[p][row]))
        assert torch.equal(model(input_ids=ids).logits, base_logits), "outside `at` the model is not its base"
    grid.remove()
    assert not any(_wrapped(m) for m in model.modules()), "wrappers left behind"
    assert torch.equal(model(input_ids=ids).logits, base_logits)


@pytest.mark.parametrize("kind,path", STACKED_CASES)
def test_rows_equal_in_place_points(kind, path, base, tmp_path):
    rw = _rewinder(kind, path, base, tmp_path)
    points = [Point(path, a) for a in (0.0, 0.35, 1.0, 0.7)]
    _check({path: rw}, points, [MIXED_ROWS, sorted(MIXED_ROWS)])


def test_two_paths_schedules_and_new_points_in_one_grid(base, tmp_path):
    """Points of the cayley and dense paths share a pass; a per-layer schedule and an extrapolated alpha too. A
    second `at` with other points writes the stacks again (the first `at` of _check's two layouts fills them)."""
    rw = _rewinder("oft", "cayley", base, tmp_path)
    rewinders = {"cayley": rw, "dense": Rewinder(rw.model, rw.update, "dense", w0=rw.w0)}
    points = [Point("cayley", 0.5), Point("dense", 0.5), Point("cayley", 1.3), Point("dense", 0.8, Schedule("ramp"))]
    _check(rewinders, points, [[0, 1, 2, 3], [3, 3, 0, 1]])
    _check(rewinders, points[::-1], [[0, 0, 1, 2, 3, 3]])


def test_full_finetune_is_refused(base, tmp_path):
    """Full FT moves embeddings and norms too: no stack for them, refused before anything is wrapped."""
    rw = _rewinder("full", "linear", base, tmp_path)
    with pytest.raises(RewindError, match="stacks take Linear weights only"):
        stacked.install({"linear": rw}.__getitem__, rw)
    assert not any(_wrapped(m) for m in rw.model.modules())


@pytest.mark.parametrize("kind,path", [("ia3", "linear"), ("dora", "dora"), ("lora", "linear")])
def test_linear_biases(kind, path, tmp_path):
    """Biased linears: a bias the update moves is stacked (IA3 scales it), one it leaves is the module's own."""
    rw = _rewinder(kind, path, _biased_base(), tmp_path)
    _check({path: rw}, [Point(path, a) for a in (0.0, 1.0, 0.5)], [[0, 1, 2, 1], [0, 1, 1, 2]])


def test_bad_points_leave_the_base(base, tmp_path):
    rw = _rewinder("lora", "linear", base, tmp_path)
    grid = stacked.install({"linear": rw}.__getitem__, rw)
    ids = _ids(2)
    before = rw.model(input_ids=ids).logits
    with pytest.raises(RewindError), grid.at([Point("linear", 0.5), Point("linear", 2.0)], rows=1):
        pass  # 2.0 is an extrapolation, refused: nothing runs
    assert torch.equal(rw.model(input_ids=ids).logits, before)
    with (
        pytest.raises(RewindError, match="not on the linear path"),
        grid.at([Point("linear", 0.5, cayley_scale="sqrt")]),
    ):
        pass
    assert torch.equal(rw.model(input_ids=ids).logits, before)
    with pytest.raises(RewindError, match="rows"), grid.at([Point("linear", 0.5)], rows=2):
        rw.model(input_ids=ids.repeat(2, 1))
    grid.remove()


@torch.no_grad()
def test_a_grid_under_another_comes_off_only_after_it(base, tmp_path):
    """A branches grid and a stacked grid on one model nest their wrappers: the inner one refuses to come off while
    the outer is on (it would take the outer's wrappers with it), and in order both come off, leaving the base."""
    from rewind import grid as branches

    rw = _rewinder("lora", "linear", base, tmp_path)
    ids = _ids(2)
    base_logits = rw.model(input_ids=ids).logits
    inner = branches.install(rw)
    outer = stacked.install({"linear": rw}.__getitem__, rw)
    with pytest.raises(RewindError, match="remove that one first"):
        inner.remove()
    with outer.at([Point("linear", 1.0)], rows=2):  # the outer still works, over the idle inner branches
        at_final = rw.model(input_ids=ids).logits
    rw.set(1.0)
    assert rel_err(at_final, rw.model(input_ids=ids).logits) <= TOL
    rw.set(0.0)
    outer.remove()
    inner.remove()
    assert not any(_wrapped(m) for m in rw.model.modules()), "wrappers left behind"
    assert torch.equal(rw.model(input_ids=ids).logits, base_logits)
