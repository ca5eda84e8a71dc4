"""Grid mode: every batch row at its own point equals the in-place model at that point (fp32, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import TARGETS, make_adapter, rel_err, tiny_base
from transformers import LlamaConfig, LlamaForCausalLM

from rewind.engine import Point, attach
from rewind.errors import RewindError
from rewind.grid import install
from rewind.schedule import Schedule
from rewind.updates.base import Delta

ALPHAS = [0.0, 0.35, 1.0, 0.7]  # a batch mixing four points, the base among them
TOL = 1e-5


def _ids(rows: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 128, (rows, 10), generator=torch.Generator().manual_seed(seed))


def _biased_base() -> LlamaForCausalLM:
    """tiny_base with biases on every linear layer: IA3, DoRA and dense bias branches must handle them."""
    config = LlamaConfig(**{**tiny_base().config.to_dict(), "attention_bias": True, "mlp_bias": True})
    torch.manual_seed(4)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def _full(base, out, tie=False):
    """A full finetune touching embeddings, norms, one layer's linears (and their biases) and the head."""
    tuned = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "layers.1." in name or "norm" in name or "embed" in name or "lm_head" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    tuned.save_pretrained(out)


def _pissa(base, out):
    """A PiSSA adapter (residual base) with its step-0 adapter: rewind reads it as rank 2r against the true W0."""
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights="pissa", target_modules=TARGETS)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    peft_model.save_pretrained(out / "init")
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(out / "trained")
    return out / "trained", out / "init"


def _refused(rw, match):
    """install refuses with one RewindError, leaving the model where it was and without hooks."""
    before = {n: p.clone() for n, p in rw.model.named_parameters()}
    with pytest.raises(RewindError, match=match):
        install(rw)
    assert not any(_wrapped(m) for m in rw.model.modules())
    for name, p in rw.model.named_parameters():
        assert torch.equal(p, before[name]), name


def _wrapped(module) -> bool:
    """A branch left on the module: a forward hook (PerPoint) or a branch's wrapper of its forward."""
    forward = module.__dict__.get("forward")
    return bool(module._forward_hooks or module._forward_pre_hooks or getattr(forward, "__self__", None))


def _rewinder(kind, path, base, tmp_path, cayley_scale="linear"):
    if kind == "full":
        _full(base, tmp_path / "a")
        return attach(copy.deepcopy(base), tmp_path / "a", path=path)
    if kind == "pissa":
        adapter, init = _pissa(base, tmp_path)
        return attach(copy.deepcopy(base), adapter, path=path, init_adapter=init)
    make_adapter(kind, base, tmp_path / "a")
    return attach(copy.deepcopy(base), tmp_path / "a", path=path, cayley_scale=cayley_scale)


@torch.no_grad()
def _check(rw, points, rows_of, allow_extrapolation=False):
    """Reference logits of each point in place, then one grid forward; every row within TOL of its point."""
    base_params = {n: p.clone() for n, p in rw.model.named_parameters()}
    ids = _ids(len(rows_of))
    reference = []
    for p in points:
        alpha, schedule = (p.alpha, p.schedule) if isinstance(p, Point) else (p, None)
        rw.set(alpha, schedule, allow_extrapolation)
        reference.append(rw.model(input_ids=ids).logits)
    moved = [rel_err(reference[i], reference[0]) for i in range(1, len(points))]
    assert min(moved) > 1e-3, f"points too close to tell apart ({min(moved):.1e}): test is void"
    rw.set(0.0)
    base_logits = rw.model(input_ids=ids).logits
    grid = install(rw)
    blocked = sorted(rows_of)  # k rows per point, in order: the layout branches batch over
    for layout in [rows_of, blocked] if len(rows_of) % len(points) == 0 else [rows_of]:
        with grid.at(points, rows=layout, allow_extrapolation=allow_extrapolation):
            out = rw.model(input_ids=ids).logits
        for row, p in enumerate(layout):
            assert rel_err(out[row], reference[p][row]) <= TOL, (row, p, rel_err(out[row], reference[p][row]))
    assert torch.equal(rw.model(input_ids=ids).logits, base_logits), "outside `at` the model is not its base"
    grid.remove()
    for name, p in rw.model.named_parameters():
        assert torch.equal(p, base_params[name]), f"{name} changed"
    assert not any(_wrapped(m) for m in rw.model.modules()), "branches left behind"
    assert torch.equal(rw.model(input_ids=ids).logits, base_logits)


MIXED_ROWS = [2, 0, 1, 3, 0, 2, 1, 3]  # rows not grouped by point, every point twice

CASES = [
    ("lora", "linear"),
    ("rslora", "linear"),
    ("pissa", "linear"),
    ("adalora", "linear"),
    ("vera", "linear"),
    ("ia3", "linear"),
    ("ia3", "dense"),
    ("lora", "dense"),
    ("miss", "linear"),
    ("miss-bat", "linear"),
    ("lora-save-head", "linear"),
    ("oft", "cayley"),
    ("oft-exact", "cayley"),
    ("oft-coft", "cayley"),
    ("oft-share", "cayley"),
    ("oft", "dense"),
    ("dora", "dora"),
    ("dora", "linear"),
    ("dora", "dense"),
    ("full", "linear"),
    ("full", "dense"),
    ("loha", "linear"),
    ("loha", "dense"),
    ("lokr", "linear"),
    ("lokr-both", "linear"),
    ("boft", "dense"),
    ("boft-butterfly", "dense"),
]


@pytest.fixture(scope="module")
def base():
    return tiny_base()


@pytest.mark.parametrize("kind,path", CASES)
def test_rows_equal_in_place_points(kind, path, base, tmp_path):
    rw = _rewinder(kind, path, base, tmp_path)
    assert rw.path_name == path
    _check(rw, ALPHAS, MIXED_ROWS)


@pytest.mark.parametrize("kind,path", [("lora", "linear"), ("ia3", "linear"), ("dora", "dora"), ("full", "linear")])
def test_linear_biases(kind, path, tmp_path):
    """Biased linears: IA3 scales the output with its bias, DoRA's factor leaves the bias out, full FT moves it."""
    rw = _rewinder(kind, path, _biased_base(), tmp_path)
    assert kind != "full" or any(n.endswith("bias") for n in rw.update.deltas), "no bias moved: test is void"
    _check(rw, ALPHAS, MIXED_ROWS)


def test_tied_embeddings(tmp_path):
    """A tied head shares the embedding tensor: both modules carry the branch."""
    config = LlamaConfig(**{**tiny_base().config.to_dict(), "tie_word_embeddings": True})
    torch.manual_seed(5)
    base = LlamaForCausalLM(config).eval()
    _full(base, tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a")
    assert rw.model.lm_head.weight is rw.model.model.embed_tokens.weight
    _check(rw, ALPHAS, MIXED_ROWS)


@pytest.mark.parametrize(
    "kind,path,schedules",
    [
        ("lora", "linear", ["ramp", "ramp", "ramp", "ramp"]),
        ("oft", "cayley", ["balanced", "ramp", "uniform", "balanced"]),
        ("ia3", "linear", ["0.1,0.9,0.4", "ramp", "uniform", "1,0,0.5"]),
        ("full", "dense", ["ramp", "0.2,1,0.6", "balanced", "uniform"]),
        ("dora", "dora", ["ramp", "balanced", "ramp", "uniform"]),
    ],
)
def test_layer_schedules(kind, path, schedules, base, tmp_path):
    """Per-layer alphas: each row's point has its own schedule, and the schedules differ within the batch."""
    rw = _rewinder(kind, path, base, tmp_path)
    points = [Point(path, a, Schedule.parse(s)) for a, s in zip([0.2, 0.5, 0.8, 0.4], schedules)]
    _check(rw, points, MIXED_ROWS)


def test_cayley_sqrt_scale_and_extrapolation(base, tmp_path):
    rw = _rewinder("oft", "cayley", base, tmp_path, cayley_scale="sqrt")
    _check(rw, [0.0, 0.25, 1.0, 1.5], [0, 1, 2, 3, 3, 2], allow_extrapolation=True)


def test_greedy_generation_per_row(base, tmp_path):
    """Decoding with a KV cache: every step runs the branches, so each row generates what its point generates."""
    rw = _rewinder("oft", "cayley", base, tmp_path)
    ids, alphas = _ids(2, seed=7), [0.0, 0.5, 1.0]
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    reference = []
    for a in alphas:
        rw.set(a)
        reference.append(rw.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs))
    assert any(not torch.equal(r, reference[0]) for r in reference[1:]), "all points generate alike: test is void"
    grid = install(rw)
    batch = ids.repeat(len(alphas), 1)
    with grid.at(alphas, rows=len(ids)):
        out = rw.model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), **kwargs)
    grid.remove()
    assert torch.equal(out, torch.cat(reference))


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_shared_low_rank_products(kind, base, tmp_path):
    """Siblings of one input size share one A x product (q, k, v and o here); o_proj reads another input, so its
    product is computed again, not taken from q's: every row still equals its point."""
    from tiny import randomize

    config = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], use_dora=kind == "dora")
    peft_model = get_peft_model(copy.deepcopy(base), config)
    randomize(peft_model, 0.3, 1)
    peft_model.save_pretrained(tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a", path="dora" if kind == "dora" else "linear")
    grid = install(rw)
    shared = {id(b.update.shared) for b, _ in grid._branches if b.module is rw.model.model.layers[0].self_attn.q_proj}
    siblings = [b for b, _ in grid._branches if id(b.update.shared) in shared]
    assert len(siblings) == 4, "q, k, v and o do not share one product: test is void"
    grid.remove()
    _check(rw, [0.0, 0.5, 1.0, 0.7], sorted(MIXED_ROWS))


def test_shared_product_does_not_hold_its_input():
    """The product is kept for the siblings, not the input: a 7B prefill ran out of memory while every layer's
    shared product held its input. A new input of the same shape gets its own product."""
    import gc
    import weakref

    from rewind.grid.branches import SharedProduct

    shared = SharedProduct([torch.ones(2, 3), torch.ones(1, 3)])
    x = torch.ones(4, 3)
    first = shared.product(x, points=2)
    assert shared.product(x, points=2) is first
    held = weakref.ref(x)
    del x
    gc.collect()
    assert held() is None, "the shared product keeps its input alive"
    assert torch.equal(shared.product(2 * torch.ones(4, 3), points=2), 2 * first)


def test_forward_already_wrapped(base, tmp_path):
    """A module whose instance already wraps its forward (as accelerate's hooks do): the branch runs around that
    wrapper, which still runs, and remove puts that wrapper back, not the class's forward."""
    rw = _rewinder("lora", "linear", base, tmp_path)
    module = rw.model.model.layers[0].self_attn.q_proj
    calls = []

    def wrapper(x, inner=module.forward):
        calls.append(x.shape[0])
        return inner(x)

    module.forward = wrapper
    _check(rw, [0.0, 0.5, 1.0], [0, 1, 2, 2, 1, 0])  # removes the grid; then only `wrapper` may be left
    assert calls and set(calls) >= {6}, "the wrapper did not run inside the grid"
    assert module.__dict__.pop("forward") is wrapper


def test_bad_input_changes_nothing(base, tmp_path):
    rw = _rewinder("lora", "linear", base, tmp_path)
    grid = install(rw)
    ids = _ids(4)
    base_logits = rw.model(input_ids=ids).logits.detach()
    for points, rows, match in [
        ([0.5, 1.5], 2, r"outside \[0, 1\]"),
        ([Point("dense", 0.5)], 4, "not on the installed path"),
        ([0.5, 1.0], [0, 2, 1, 0], "outside the 2 points"),
        ([0.5, 1.0], 0, "at least 1"),
        ([], 1, "no points"),
    ]:
        with pytest.raises(RewindError, match=match), grid.at(points, rows):
            pass
        assert grid.points is None
    with pytest.raises(RewindError, match="batch has 4 rows, the points were set for 6"), grid.at([0.5, 1.0], 3):
        rw.model(input_ids=ids)
    assert torch.equal(rw.model(input_ids=ids).logits, base_logits)
    with grid.at([1.0], 1), pytest.raises(RewindError, match="already set"), grid.at([0.5], 1):
        pass
    grid.remove()
    with pytest.raises(RewindError, match="removed"), grid.at([0.5], 1):
        pass


def test_path_without_branch_is_refused(base, tmp_path):
    """A path grid mode does not know (one added later) is refused before anything changes."""
    rw = _rewinder("lora", "linear", base, tmp_path)
    rw.set(0.5)
    rw.path_name = "geodesic"
    _refused(rw, "the geodesic path has no per-row branch")


@pytest.mark.parametrize("kind", ["boft", "boft-butterfly"])
def test_boft_path_is_refused(kind, base, tmp_path):
    """BOFT's own path rotates by butterfly factors at every alpha: no branch computes it (its dense line grids)."""
    rw = _rewinder(kind, "auto", base, tmp_path)
    assert rw.path_name == "boft"
    rw.set(0.5)
    _refused(rw, "the boft path has no per-row branch")


def test_update_kind_without_branch_is_refused(base, tmp_path):
    """An update kind the grid does not know on the linear path (one added later) is refused, not taken as a line."""

    class Geodesic(Delta):
        def merged(self, w0):
            return w0.float() * 2

    rw = _rewinder("lora", "linear", base, tmp_path)
    rw.set(0.5)
    name = next(iter(rw.update.deltas))
    rw.update.deltas[name] = Geodesic()
    _refused(rw, rf"Geodesic updates \({name}\) have no per-row branch on the linear path")


@pytest.mark.parametrize(
    "kind,path,grad",
    [
        ("lora", "linear", False),
        ("lora", "linear", True),
        ("vera", "linear", False),
        ("ia3", "linear", False),
        ("oft", "cayley", False),
        ("oft-share", "cayley", False),
        ("oft", "dense", False),
        ("oft", "dense", True),
        ("dora", "dora", False),
        ("dora", "dora", True),
        ("full", "linear", False),
    ],
)
def test_one_point_rows_equal_in_place(kind, path, grad, base, tmp_path):
    """The whole batch at one point (branches then fold the point's alpha into their weights or their one product),
    with autograd off as in evaluation and on (where branches do not add in place)."""
    rw = _rewinder(kind, path, base, tmp_path)
    ids = _ids(3)
    with torch.no_grad():
        rw.set(0.7)
        reference = rw.model(input_ids=ids).logits
        rw.set(0.0)
        assert rel_err(reference, rw.model(input_ids=ids).logits) > 1e-3, "the point is the base: test is void"
    grid = install(rw)
    with torch.set_grad_enabled(grad), grid.at([0.7], rows=3):
        out = rw.model(input_ids=ids).logits.detach()
    grid.remove()
    for row in range(3):
        assert rel_err(out[row], reference[row]) <= TOL, (row, rel_err(out[row], reference[row]))


def test_blocked_rows_with_autograd(base, tmp_path):
    """Rows blocked by point with autograd on: the low-rank branch adds out of place, every row still at its point."""
    rw = _rewinder("lora", "linear", base, tmp_path)
    ids = _ids(6)
    with torch.no_grad():
        reference = []
        for a in (0.3, 1.0):
            rw.set(a)
            reference.append(rw.model(input_ids=ids[:3]).logits)
        rw.set(0.0)
    grid = install(rw)
    with grid.at([0.3, 1.0], rows=3):
        out = rw.model(input_ids=torch.cat([ids[:3], ids[:3]])).logits
    grid.remove()
    assert out.requires_grad, "autograd was off: test is void"
    assert rel_err(out[:3].detach(), reference[0]) <= TOL and rel_err(out[3:].detach(), reference[1]) <= TOL
