"""Exactness of every path for every method, against peft's own merge (an independent computation)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import get_peft_model
from tiny import ADAPTERS, butterflies, logits, make_adapter, make_full, randomize, rel_err, tiny_base

from rewind.engine import attach
from rewind.errors import RewindError
from rewind.schedule import Schedule


@pytest.fixture(scope="module")
def base():
    return tiny_base()


def _paths(kind: str) -> list[str]:
    if kind == "dora":
        return ["dora", "linear", "dense"]  # linear is DoRA's dense line too (sweeps recorded it before `dora`)
    if kind.startswith("boft"):
        return ["boft", "dense"]
    return ["cayley", "dense"] if kind.startswith("oft") else ["linear", "dense"]


CASES = [(kind, path) for kind in ADAPTERS for path in _paths(kind)]
# On a GPU the same checks run on CUDA, where the LoRA and Cayley writes are rewind's Triton kernels (fused.py).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,path", CASES)
def test_endpoints_match_base_and_peft_merge(kind, path, base, tmp_path, device):
    merged = make_adapter(kind, base, tmp_path / "adapter")
    rw = attach(copy.deepcopy(base).to(device), tmp_path / "adapter", path=path)
    before, after = dict(base.named_parameters()), dict(merged.named_parameters())
    assert rw.update.deltas, "nothing read"

    rw.set(1.0)
    params = {n: p.cpu() for n, p in rw.model.named_parameters()}
    for name in rw.update.deltas:
        assert rel_err(after[name], before[name]) > 1e-3, f"{name}: the adapter did not move it; test is void"
        assert rel_err(params[name], after[name]) <= 1e-5, name
    torch.testing.assert_close(logits(rw.model), logits(merged), rtol=1e-4, atol=1e-5)

    rw.set(0.0)
    for name, p in rw.model.named_parameters():
        assert torch.equal(p.cpu(), before[name]), f"{name} is not bit-exact at alpha=0"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["lora", "dora", "ia3", "oft", "oft-exact", "miss-bat"])
def test_full_finetune_and_no_drift(kind, base, tmp_path, device):
    make_adapter(kind, base, tmp_path / "a")
    rw = attach(copy.deepcopy(base).to(device), tmp_path / "a")
    rw.set(0.3)
    snapshot = {n: p.clone() for n, p in rw.model.named_parameters()}
    rw.set(1.0)
    rw.set(0.7)
    rw.set(0.3)
    for name, p in rw.model.named_parameters():
        assert torch.equal(p, snapshot[name]), name


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(), reason="the checkpoint is read on the CPU, the model lives on a GPU"
            ),
        ),
    ],
)
def test_full_finetune_endpoints(base, tmp_path, device):
    tuned = make_full(base, tmp_path / "full")
    rw = attach(copy.deepcopy(base).to(device), tmp_path / "full")
    assert rw.update.method.name == "full" and rw.path_name == "linear"
    assert all(".layers.1." in n or "norm" in n for n in rw.update.deltas)  # unchanged tensors are not kept
    rw.set(1.0)
    for name, p in rw.model.named_parameters():
        assert torch.equal(p.cpu(), dict(tuned.named_parameters())[name]), name
    rw.set(0.0)
    for name, p in rw.model.named_parameters():
        assert torch.equal(p.cpu(), dict(base.named_parameters())[name]), name


def test_linear_path_is_linear_in_alpha(base, tmp_path):
    make_adapter("lora", base, tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a")
    name = next(iter(rw.update.deltas))
    w0 = dict(base.named_parameters())[name].detach()
    rw.set(1.0)
    w1 = rw.model.get_parameter(name).detach().clone()
    rw.set(0.4)
    torch.testing.assert_close(rw.model.get_parameter(name), w0 + 0.4 * (w1 - w0), rtol=1e-5, atol=1e-6)


# --- LyCORIS kinds on the linear path -------------------------------------------------------------------------

# the one factor whose scaling by alpha gives alpha * dW: peft's merge of that adapter is the path's point
SCALED_FACTOR = {"loha": "hada_w1_a", "lokr": "lokr_w1", "lokr-both": "lokr_w1_a"}


@pytest.mark.parametrize("kind", sorted(SCALED_FACTOR))
def test_linear_path_is_peft_merge_of_the_adapter_with_a_factor_scaled(kind, base, tmp_path):
    config, std = ADAPTERS[kind]
    peft_model = get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
    randomize(peft_model, std)
    peft_model.save_pretrained(tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a")
    assert rw.path_name == "linear"
    for alpha in [0.3, 0.7, -0.4]:
        scaled = copy.deepcopy(peft_model)
        with torch.no_grad():
            for name, p in scaled.named_parameters():
                if f".{SCALED_FACTOR[kind]}." in name:
                    p.mul_(alpha)
        reference = dict(scaled.merge_and_unload().named_parameters())
        rw.set(alpha, allow_extrapolation=True)
        for name in rw.update.deltas:
            assert rel_err(rw.model.get_parameter(name), reference[name]) <= 1e-5, (name, alpha)


# --- OFT's Cayley path --------------------------------------------------------------------------------------


def _identity_q_base():
    """A base whose q_proj weights are the identity, so W(alpha) of q_proj is blockdiag(R(alpha))^T itself."""
    model = tiny_base()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.copy_(torch.eye(64))
    return model


def _oft_peft(kind, base, out, project=False):
    config, std = ADAPTERS[kind]
    peft_model = get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
    randomize(peft_model, std)
    if project:  # coft: store the generator peft itself projects, so scaling it is well defined
        with torch.no_grad():
            for module in peft_model.modules():
                if hasattr(module, "oft_R") and "default" in getattr(module, "oft_R", {}):
                    rot = module.oft_R["default"]
                    rot.weight.copy_(rot._project_batch(rot.weight, eps=rot.eps))
    peft_model.save_pretrained(out)
    return peft_model


def test_cayley_exact_branch_stays_orthogonal(tmp_path):
    base = _identity_q_base()
    _oft_peft("oft-exact", base, tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a", path="cayley")
    for alpha in [0.0, 0.1, 0.25, 0.5, 0.9, 1.0, 1.7]:
        rw.set(alpha, allow_extrapolation=True)
        for layer in rw.model.model.layers:
            W = layer.self_attn.q_proj.weight.detach().double()
            torch.testing.assert_close(W @ W.T, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["oft", "oft-exact"])
def test_cayley_R1_equals_peft_R(kind, tmp_path):
    base = _identity_q_base()
    peft_model = _oft_peft(kind, base, tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a", path="cayley")
    rw.set(1.0)
    for i, layer in enumerate(rw.model.model.layers):
        peft_layer = peft_model.base_model.model.model.layers[i].self_attn.q_proj
        with torch.no_grad():
            R_peft = peft_layer.oft_R["default"].get_weight()  # block-diagonal R, as peft merges it
        torch.testing.assert_close(layer.self_attn.q_proj.weight.detach().T, R_peft, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["oft", "oft-exact", "oft-coft", "oft-share"])
@pytest.mark.parametrize("scale", ["linear", "sqrt"])
def test_cayley_equals_peft_merge_of_scaled_generator(kind, scale, tmp_path):
    base = tiny_base()
    peft_model = _oft_peft(kind, base, tmp_path / "a", project=kind == "oft-coft")
    rw = attach(copy.deepcopy(base), tmp_path / "a", path="cayley", cayley_scale=scale)
    s = {"linear": lambda a: a, "sqrt": math.sqrt}[scale]
    for alpha in [0.3, 0.7]:
        scaled = copy.deepcopy(peft_model)
        with torch.no_grad():
            for name, p in scaled.named_parameters():
                if "oft_R" in name:
                    p.mul_(s(alpha))
        reference = dict(scaled.merge_and_unload().named_parameters())
        rw.set(alpha)
        for name in rw.update.deltas:
            assert rel_err(rw.model.get_parameter(name), reference[name]) <= 1e-5, (name, alpha)


def test_cayley_differs_from_dense_in_between(tmp_path):
    """The two OFT paths agree at the ends and part in the middle (else comparing them would be pointless)."""
    base = tiny_base()
    make_adapter("oft-exact", base, tmp_path / "a")
    cay = attach(copy.deepcopy(base), tmp_path / "a", path="cayley")
    den = attach(copy.deepcopy(base), tmp_path / "a", path="dense")
    name = next(iter(cay.update.deltas))
    cay.set(0.5)
    den.set(0.5)
    assert rel_err(cay.model.get_parameter(name), den.model.get_parameter(name)) > 1e-4
    for path_name in ["linear", "dora"]:
        with pytest.raises(RewindError, match="does not apply"):
            attach(copy.deepcopy(base), tmp_path / "a", path=path_name)


# --- BOFT's own path (and what it shares with DoRA's) ------------------------------------------------------


def _own_path_is(reference_at, path, alphas, base, adapter):
    """The adapter's natural path is `path`, and at each alpha it gives reference_at(alpha) (peft's merge of the
    scaled adapter) where the dense line does not (else the check could not tell the two apart)."""
    rw = attach(copy.deepcopy(base), adapter)
    assert rw.path_name == path
    dense = attach(copy.deepcopy(base), adapter, path="dense")
    for alpha in alphas:
        reference = reference_at(alpha)
        rw.set(alpha, allow_extrapolation=True)
        dense.set(alpha, allow_extrapolation=True)
        for name in rw.update.deltas:
            assert rel_err(rw.model.get_parameter(name), reference[name]) <= 1e-5, (name, alpha)
            assert rel_err(dense.model.get_parameter(name), reference[name]) > 1e-4, (name, alpha)


BOFT = [kind for kind in ADAPTERS if kind.startswith("boft")]


def _boft_peft(kind, base, out):
    config, std = ADAPTERS[kind]
    with butterflies(config):
        peft_model = get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
    randomize(peft_model, std)
    peft_model.save_pretrained(out)
    return peft_model


def _boft_at(peft_model, alpha):
    """peft's merge of the BOFT adapter with alpha * boft_R and 1 + alpha * (boft_s - 1)."""
    scaled = copy.deepcopy(peft_model)
    with torch.no_grad():
        for name, p in scaled.named_parameters():
            if ".boft_R." in name:
                p.mul_(alpha)
            elif ".boft_s." in name:
                p.copy_(1 + alpha * (p - 1))
    with butterflies(next(iter(scaled.peft_config.values()))):
        return dict(scaled.merge_and_unload().named_parameters())


@pytest.mark.parametrize("kind", BOFT)
def test_boft_path_is_peft_merge_of_the_scaled_adapter(kind, base, tmp_path):
    peft_model = _boft_peft(kind, base, tmp_path / "a")
    _own_path_is(lambda alpha: _boft_at(peft_model, alpha), "boft", [0.3, 0.7, -0.5, 1.5], base, tmp_path / "a")
    for path_name in ["linear", "cayley", "dora"]:
        with pytest.raises(RewindError, match="does not apply"):
            attach(copy.deepcopy(base), tmp_path / "a", path=path_name)


@pytest.mark.parametrize("kind", ["boft", "boft-butterfly"])
def test_boft_path_rotates_orthogonally_at_every_alpha(kind, tmp_path):
    """On an identity q_proj, W(alpha) = diag(s(alpha)) M(alpha)^T: rescaled by 1/s(alpha), a rotation."""
    base = _identity_q_base()
    peft_model = _boft_peft(kind, base, tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a")
    for alpha in [0.2, 0.6, 1.0, 1.8]:
        rw.set(alpha, allow_extrapolation=True)
        for i, layer in enumerate(rw.model.model.layers):
            s = peft_model.base_model.model.model.layers[i].self_attn.q_proj.boft_s["default"].detach().double()
            M = layer.self_attn.q_proj.weight.detach().double() / (1 + alpha * (s - 1))
            torch.testing.assert_close(M @ M.T, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "n,blocks,half,factors",
    [(64, 16, 2, 2), (64, 8, 2, 2), (64, 4, 2, 2), (128, 8, 4, 1), (64, 4, 8, 1), (96, 12, 2, 1), (64, 8, 4, 0)],
)
def test_butterfly_permutation_is_peft_permutation(n, blocks, half, factors):
    from peft.tuners.boft.layer import BOFTLayer

    from rewind.updates.boft import butterfly_perm

    assert torch.equal(
        butterfly_perm(n, blocks, half, factors), BOFTLayer.block_butterfly_perm(None, n, blocks, half, factors)
    )


# --- DoRA's own path ------------------------------------------------------------------------------------------


def _dora_at(peft_model, alpha):
    """peft's merge of the DoRA adapter at alpha: B scaled by alpha, magnitude (1 - alpha)*||W0||_row + alpha*m,
    with ||W0||_row taken from peft's own base layer (the norm peft's DoRA normalises by, at B = 0)."""
    scaled = copy.deepcopy(peft_model)
    with torch.no_grad():
        for module in scaled.modules():
            if "default" in getattr(module, "lora_magnitude_vector", {}):
                magnitude = module.lora_magnitude_vector["default"].weight
                w0_norm = module.lora_magnitude_vector["default"].get_weight_norm(
                    module.get_base_layer().weight, torch.zeros_like(module.get_base_layer().weight), scaling=1.0
                )
                magnitude.copy_((1 - alpha) * w0_norm + alpha * magnitude)
                module.lora_B["default"].weight.mul_(alpha)
    return dict(scaled.merge_and_unload().named_parameters())


def test_dora_path_is_peft_merge_of_the_scaled_adapter(base, tmp_path):
    config, std = ADAPTERS["dora"]
    peft_model = get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
    randomize(peft_model, std)
    peft_model.save_pretrained(tmp_path / "a")
    _own_path_is(lambda alpha: _dora_at(peft_model, alpha), "dora", [0.3, 0.7, 1.4], base, tmp_path / "a")


# --- layer-wise schedules -------------------------------------------------------------------------------------


def test_layer_list_touches_only_its_layers(base, tmp_path):
    merged = make_adapter("lora-save-head", base, tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a")
    rw.set(0.5, Schedule.parse("0,1,0"))
    before, after = dict(base.named_parameters()), dict(merged.named_parameters())
    for name in rw.update.deltas:
        p = rw.model.get_parameter(name)
        if ".layers.1." in name:
            assert rel_err(p, after[name]) <= 1e-5, name
        elif ".layers." in name:
            assert torch.equal(p, before[name]), name
        else:  # lm_head (modules_to_save) is outside the layers: it takes the global alpha
            torch.testing.assert_close(p, 0.5 * (before[name] + after[name]), rtol=1e-5, atol=1e-6)


def test_ramp_schedule_per_layer(base, tmp_path):
    make_adapter("lora", base, tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a")
    rw.set(1.0)
    full = {n: rw.model.get_parameter(n).detach().clone() for n in rw.update.deltas}
    rw.set(0.2, Schedule.parse("ramp"))
    expected = {0: 0.2, 1: 0.6, 2: 1.0}  # alpha + (1 - alpha) * l / (L - 1), L = 3
    for name in rw.update.deltas:
        layer = int(name.split(".layers.")[1].split(".")[0])
        w0 = dict(base.named_parameters())[name].detach()
        torch.testing.assert_close(
            rw.model.get_parameter(name), w0 + expected[layer] * (full[name] - w0), rtol=1e-5, atol=1e-6
        )


def test_balanced_schedule_caps_at_median():
    alphas = Schedule.parse("balanced").layer_alphas(0.8, 4, {0: 1.0, 1: 2.0, 2: 4.0, 3: 0.5})
    median = 1.5
    assert alphas == pytest.approx([0.8, 0.8 * median / 2.0, 0.8 * median / 4.0, 0.8])


def test_balanced_schedule_on_oft_uses_generator_norms(base, tmp_path):
    make_adapter("oft", base, tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a")
    point = rw.set(0.6, Schedule.parse("balanced"))
    assert point.schedule.kind == "balanced"
    strengths = rw._strengths
    norms = {}
    for name, delta in rw.update.deltas.items():
        layer = int(name.split(".layers.")[1].split(".")[0])
        norms[layer] = norms.get(layer, 0.0) + float(delta.Q.norm()) ** 2
    assert strengths == pytest.approx({k: math.sqrt(v) for k, v in norms.items()})


@pytest.mark.parametrize(
    "spec,message",
    [("0.1,0.2", "has 2 alphas; the model has 3"), ("a,b", "layer schedule"), ("0.1,2,0.3", "outside \\[0, 1\\]")],
)
def test_bad_schedules(spec, message, base, tmp_path):
    make_adapter("lora", base, tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a")
    with pytest.raises(RewindError, match=message):
        rw.set(0.5, Schedule.parse(spec))


def test_alpha_outside_unit_interval_needs_flag(base, tmp_path):
    make_adapter("lora", base, tmp_path / "a")
    rw = attach(copy.deepcopy(base), tmp_path / "a")
    with pytest.raises(RewindError, match="--allow-extrapolation"):
        rw.set(1.5)
    assert rw.point is None  # nothing was written
    rw.set(1.5, allow_extrapolation=True)
    rw.set(-0.5, allow_extrapolation=True)
    with pytest.raises(RewindError, match="finite"):
        rw.set(float("nan"), allow_extrapolation=True)


@pytest.mark.parametrize("kind,path", CASES)
def test_paths_run_where_the_model_is(kind, path, base, tmp_path):
    """Adapters load on the CPU; the model may live elsewhere. The meta device stands in for a GPU here: any
    CPU tensor that reaches the model's device unmoved raises, as it would on CUDA."""
    make_adapter(kind, base, tmp_path / "a")
    rw = attach(copy.deepcopy(base).to("meta"), tmp_path / "a", path=path)
    rw.set(0.5)
    assert all(p.device.type == "meta" for p in rw.model.parameters())
