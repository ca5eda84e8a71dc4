"""Export: merged checkpoints and scaled adapters reload to the in-memory model's weights; bad input writes nothing."""

from __future__ import annotations

import copy
import errno
import fcntl
import json
import os

import pytest
import torch
from peft import LoraConfig, OFTConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tiny import ADAPTERS, butterflies, logits, make_adapter, make_full, randomize, rel_err, tiny_base
from transformers import AutoModelForCausalLM

from rewind import export, outdir
from rewind.engine import attach
from rewind.errors import RewindError
from rewind.schedule import Schedule


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    tiny_base().save_pretrained(d, max_shard_size="200KB")  # several shards, like a real checkpoint
    return d


@pytest.fixture(scope="module")
def base(base_dir):
    return AutoModelForCausalLM.from_pretrained(base_dir).eval()


def _resident(base, adapter, alpha, **kw):
    rw = attach(
        copy.deepcopy(base), adapter, path=kw.pop("path", "auto"), cayley_scale=kw.pop("cayley_scale", "linear")
    )
    rw.set(alpha, kw.pop("schedule", None), kw.pop("allow_extrapolation", False))
    return rw


@pytest.mark.parametrize(
    "kind,path",
    [
        ("lora", "auto"),
        ("dora", "auto"),
        ("ia3", "auto"),
        ("miss-bat", "auto"),
        ("oft", "auto"),
        ("oft-exact", "dense"),
        ("lora-save-head", "auto"),
        ("boft-butterfly", "auto"),
    ],
)
def test_merged_export_reloads_to_in_memory_logits(kind, path, base, base_dir, tmp_path):
    make_adapter(kind, base, tmp_path / "a")
    out = export.export(base_dir, tmp_path / "a", tmp_path / "out", alpha=0.6, path=path)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    rw = _resident(base, tmp_path / "a", 0.6, path=path)
    torch.testing.assert_close(logits(reloaded), logits(rw.model), rtol=0, atol=1e-6)
    assert len(list(out.glob("*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()


def test_full_finetune_export_with_schedule(base, base_dir, tmp_path):
    make_full(base, tmp_path / "full")
    out = export.export(base_dir, tmp_path / "full", tmp_path / "out", alpha=0.5, schedule=Schedule.parse("ramp"))
    rw = _resident(base, tmp_path / "full", 0.5, schedule=Schedule.parse("ramp"))
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out)), logits(rw.model), rtol=0, atol=1e-6)
    card = (out / "README.md").read_text()
    assert "| layer schedule | ramp |" in card and "0: 0.5, 1: 0.75, 2: 1" in card


@pytest.mark.parametrize(
    "kind,scale",
    [
        ("lora", "linear"),
        ("rslora", "linear"),
        ("adalora", "linear"),
        ("vera", "linear"),
        ("ia3", "linear"),
        ("miss", "linear"),
        ("miss-bat", "linear"),
        ("oft", "linear"),
        ("oft", "sqrt"),
        ("oft-exact", "linear"),
        ("oft-coft", "linear"),
        ("lora-save-head", "linear"),
        ("dora", "linear"),
        ("loha", "linear"),
        ("lokr", "linear"),
        ("lokr-both", "linear"),
        ("boft", "linear"),
        ("boft-butterfly", "linear"),
    ],
)
def test_adapter_export_is_exact(kind, scale, base, base_dir, tmp_path):
    make_adapter(kind, base, tmp_path / "a")
    out = export.export(base_dir, tmp_path / "a", tmp_path / "out", alpha=0.35, fmt="adapter", cayley_scale=scale)
    with butterflies(ADAPTERS[kind][0]):  # peft serves more than one BOFT factor only with them
        served = PeftModel.from_pretrained(copy.deepcopy(base), out).merge_and_unload()
    rw = _resident(base, tmp_path / "a", 0.35, cayley_scale=scale)
    reference = dict(served.named_parameters())
    for name in rw.update.deltas:
        assert rel_err(rw.model.get_parameter(name), reference[name]) <= 1e-5, name


@pytest.mark.parametrize(
    "kind,path,message",
    [
        ("dora", "dense", "use --format merged"),
        ("oft", "dense", "use --format merged"),
        ("boft", "dense", "use --format merged"),
    ],
)
def test_adapter_export_refused_where_inexact(kind, path, message, base, base_dir, tmp_path):
    make_adapter(kind, base, tmp_path / "a")
    with pytest.raises(RewindError, match=message):
        export.export(base_dir, tmp_path / "a", tmp_path / "out", alpha=0.5, path=path, fmt="adapter")
    assert not (tmp_path / "out").exists()


def test_dora_adapter_export_with_a_layer_schedule(base, base_dir, tmp_path):
    """Per-tensor alphas reach both of DoRA's scaled tensors (B and the magnitude) of the same module."""
    make_adapter("dora", base, tmp_path / "a")
    out = export.export(
        base_dir, tmp_path / "a", tmp_path / "out", alpha=0.2, fmt="adapter", schedule=Schedule.parse("0.1,0.9,0.5")
    )
    served = dict(PeftModel.from_pretrained(copy.deepcopy(base), out).merge_and_unload().named_parameters())
    rw = _resident(base, tmp_path / "a", 0.2, schedule=Schedule.parse("0.1,0.9,0.5"))
    for name in rw.update.deltas:
        assert rel_err(rw.model.get_parameter(name), served[name]) <= 1e-5, name


def _coft_adapter(base, out, eps):
    """A coft adapter whose stored generator is peft's own projection (as training leaves it)."""
    peft_model = get_peft_model(
        copy.deepcopy(base), OFTConfig(r=0, oft_block_size=16, coft=True, eps=eps, target_modules=["q_proj", "up_proj"])
    )
    randomize(peft_model, 0.05)
    with torch.no_grad():
        for module in peft_model.modules():
            if "default" in getattr(module, "oft_R", {}):
                rot = module.oft_R["default"]
                rot.weight.copy_(rot._project_batch(rot.weight, eps=rot.eps))
    peft_model.save_pretrained(out)


@pytest.mark.parametrize("alpha,scale", [(1.5, "linear"), (1.5, "sqrt"), (-1.2, "linear")])
def test_coft_adapter_export_refused_outside_the_ball(alpha, scale, base, base_dir, tmp_path):
    """peft projects a coft generator back onto its ball before each use: scaled past it, the adapter would load
    as the alpha = 1 rotation. The merged export of the same point is still written."""
    _coft_adapter(base, tmp_path / "a", eps=2e-2)  # every block on the ball
    with pytest.raises(RewindError, match="leaves peft's ball.*use --format merged"):
        export.export(
            base_dir,
            tmp_path / "a",
            tmp_path / "out",
            alpha=alpha,
            fmt="adapter",
            cayley_scale=scale,
            allow_extrapolation=True,
        )
    _assert_nothing_written(tmp_path, tmp_path / "out")
    out = export.export(
        base_dir, tmp_path / "a", tmp_path / "out", alpha=alpha, cayley_scale=scale, allow_extrapolation=True
    )
    rw = _resident(base, tmp_path / "a", alpha, cayley_scale=scale, allow_extrapolation=True)
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out)), logits(rw.model), rtol=0, atol=1e-6)


def test_coft_adapter_export_inside_the_ball_is_exact(base, base_dir, tmp_path):
    """Past alpha 1 but still inside the ball (a wide eps): peft uses the scaled generator as written."""
    _coft_adapter(base, tmp_path / "a", eps=50.0)
    out = export.export(base_dir, tmp_path / "a", tmp_path / "out", alpha=1.5, fmt="adapter", allow_extrapolation=True)
    served = dict(PeftModel.from_pretrained(copy.deepcopy(base), out).merge_and_unload().named_parameters())
    rw = _resident(base, tmp_path / "a", 1.5, allow_extrapolation=True)
    for name in rw.update.deltas:
        assert rel_err(rw.model.get_parameter(name), served[name]) <= 1e-5, name


def test_model_card_and_checksums(base, base_dir, tmp_path):
    make_adapter("oft", base, tmp_path / "a")
    out = export.export(base_dir, tmp_path / "a", tmp_path / "out", alpha=0.7, cayley_scale="sqrt")
    card = (out / "README.md").read_text()
    from rewind import __version__
    from rewind.adapters import sha256

    for text in [
        "| method | oft |",
        "| path | cayley |",
        "| alpha | 0.7 |",
        "| cayley scale | sqrt |",
        f"| rewind | {__version__} |",
        sha256(tmp_path / "a" / "adapter_model.safetensors"),
    ]:
        assert text in card
    for shard in out.glob("*.safetensors"):
        assert f"`{shard.name}` {sha256(shard)}" in card
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3


def _residual_peft_model(base, init, use_dora=False):
    """A peft model whose init rewrote the base to W0 - s*B0@A0 (LoRA-GA: from gradients of one real batch)."""
    targets = ["q_proj", "down_proj"]
    if init != "lora_ga":
        config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=init, target_modules=targets, use_dora=use_dora)
        return get_peft_model(copy.deepcopy(base), config)
    from peft import LoraGAConfig
    from peft.tuners.lora.loraga import preprocess_loraga

    model = copy.deepcopy(base)
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        init_lora_weights="lora_ga",
        lora_ga_config=LoraGAConfig(),
        target_modules=targets,
        use_dora=use_dora,
    )
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(5))
    preprocess_loraga(model, config, lambda: model(input_ids=ids, labels=ids).loss.backward())
    return get_peft_model(model, config)


@pytest.mark.parametrize("init,use_dora", [("pissa", False), ("olora", False), ("lora_ga", False), ("pissa", True)])
def test_residual_init_needs_init_adapter_then_matches(init, use_dora, base, base_dir, tmp_path):
    """Residual inits train on W0 - s*B0@A0: rewind must measure dW against the true base, given the step-0 adapter
    (DoRA on a residual base keeps its magnitude: it normalises W0 + s*(B@A - B0@A0))."""
    peft_model = _residual_peft_model(base, init, use_dora)
    assert (
        rel_err(
            peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight,
            base.model.layers[0].self_attn.q_proj.weight,
        )
        > 1e-3
    ), "the init left the base alone: test is void"
    peft_model.save_pretrained(tmp_path / "init")
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "magnitude" in name:
                p.mul_(1 + torch.randn_like(p) * 0.05)
            elif "lora_" in name:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(tmp_path / "trained")
    converted = [] if use_dora else [(tmp_path / "converted", None)]  # peft's conversion drops DoRA's magnitude
    if converted:
        peft_model.save_pretrained(
            tmp_path / "converted", path_initial_model_for_weight_conversion=str(tmp_path / "init")
        )
    reference = dict(peft_model.merge_and_unload().named_parameters())

    with pytest.raises(RewindError, match=f"residual base \\({init} init\\).*--init-adapter"):
        attach(copy.deepcopy(base), tmp_path / "trained")
    for adapter, init_adapter in [(tmp_path / "trained", tmp_path / "init"), *converted]:
        rw = attach(copy.deepcopy(base), adapter, init_adapter=init_adapter)
        rw.set(1.0)
        for name in rw.update.deltas:
            assert rel_err(rw.model.get_parameter(name), reference[name]) <= 1e-5, (adapter.name, name)
        rw.set(0.0)
        for name, p in rw.model.named_parameters():
            assert torch.equal(p, dict(base.named_parameters())[name])


# --- bad input: one clear error, nothing on disk ---------------------------------------------------------------


def _assert_nothing_written(parent, out):
    assert not out.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{out.name}")], "temporary dir left behind"


def test_wrong_architecture_adapter(base_dir, tmp_path):
    other = tiny_base(layers=3)
    small = type(other)(type(other.config)(**{**other.config.to_dict(), "hidden_size": 32, "intermediate_size": 64}))
    make_adapter("lora", small, tmp_path / "a")
    with pytest.raises(RewindError, match="does not fit this base"):
        export.export(base_dir, tmp_path / "a", tmp_path / "out", alpha=0.5)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_adapter_for_missing_module(base, base_dir, tmp_path):
    make_adapter("lora", tiny_base(layers=5), tmp_path / "a")
    with pytest.raises(RewindError, match="not in the base model"):
        export.export(base_dir, tmp_path / "a", tmp_path / "out")


@pytest.mark.parametrize(
    "damage,message",
    [
        ("peft_type", "unsupported peft_type 'PREFIX_TUNING'"),
        ("weights", "adapter_model.safetensors: missing"),
        ("truncate", "not a readable safetensors file"),
        ("nan", "NaN/Inf"),
        ("config", "unreadable JSON"),
    ],
)
def test_damaged_adapters(damage, message, base, base_dir, tmp_path):
    a = tmp_path / "a"
    make_adapter("lora", base, a)
    weights, config = a / "adapter_model.safetensors", a / "adapter_config.json"
    if damage == "peft_type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "peft_type": "PREFIX_TUNING"}))
    elif damage == "weights":
        weights.unlink()
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "nan":
        tensors = load_file(weights)
        next(iter(tensors.values()))[0, 0] = float("nan")
        save_file(tensors, weights)
    else:
        config.write_text("{not json")
    with pytest.raises(RewindError, match=message):
        export.export(base_dir, a, tmp_path / "out")
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_refuses_non_empty_out_and_bad_alpha(base, base_dir, tmp_path):
    make_adapter("lora", base, tmp_path / "a")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(RewindError, match="--force"):
        export.export(base_dir, tmp_path / "a", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(RewindError, match="outside \\[0, 1\\]"):
        export.export(base_dir, tmp_path / "a", tmp_path / "out2", alpha=1.2)
    _assert_nothing_written(tmp_path, tmp_path / "out2")
    export.export(base_dir, tmp_path / "a", tmp_path / "out", alpha=0.5, force=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "README.md").is_file()
    _assert_nothing_written(tmp_path, tmp_path / "out3")


def test_failure_mid_write_leaves_no_half_checkpoint(base, base_dir, tmp_path, monkeypatch):
    make_adapter("lora", base, tmp_path / "a")
    plan = export.plan(export.ExportSpec(adapter=tmp_path / "a", base=base_dir, out=tmp_path / "out", alpha=0.5))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("rewind.tensorio.ShardWriter.write", disk_full)
    with pytest.raises(RewindError, match="No space left on device"):
        export.write(plan)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_dry_run_plan_touches_nothing(base, base_dir, tmp_path):
    make_adapter("oft", base, tmp_path / "a")
    plan = export.plan(
        export.ExportSpec(
            adapter=tmp_path / "a", base=base_dir, out=tmp_path / "out", alpha=0.25, schedule=Schedule.parse("ramp")
        )
    )
    text = plan.summary()
    assert "cayley(alpha=0.25, layers=ramp)" in text and "12 updated" in text
    assert plan.layer_alphas() == {0: 0.25, 1: 0.625, 2: 1.0}
    _assert_nothing_written(tmp_path, tmp_path / "out")


# --- issue 13: what export writes ------------------------------------------------------------------------------


def _written(out) -> dict[str, torch.Tensor]:
    return {k: v for shard in sorted(out.glob("*.safetensors")) for k, v in load_file(shard).items()}


def test_dtype_bf16_is_the_fp32_merge_rounded_once(base, base_dir, tmp_path):
    make_adapter("lora", base, tmp_path / "a")
    out = export.export(base_dir, tmp_path / "a", tmp_path / "out", alpha=0.6, dtype="bf16")
    rw = _resident(base, tmp_path / "a", 0.6)  # fp32 base, fp32 W(0.6)
    written = _written(out)
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    for name, w in rw.model.state_dict().items():
        assert torch.equal(written[name], w.to(torch.bfloat16)), name  # one rounding of the exact fp32 point
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(AutoModelForCausalLM.from_pretrained(out, dtype="auto").parameters()).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def fp16_base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp16")
    tiny_base().half().save_pretrained(d)
    return d


def _inflated_lora(base, where):
    """A LoRA finite in its own fp32 whose merge overflows fp16 (|W| > 65504)."""
    make_adapter("lora", base, where)
    tensors = load_file(where / "adapter_model.safetensors")
    save_file({k: t * 1e7 if "lora_B" in k else t for k, t in tensors.items()}, where / "adapter_model.safetensors")


def test_non_finite_merge_is_refused_and_fp32_writes_it(base, fp16_base_dir, tmp_path):
    _inflated_lora(base, tmp_path / "a")
    refusal = r"model\.layers\.\d+\..*: \d+ non-finite values .* in float16 .*--dtype bf16"
    with pytest.raises(RewindError, match=refusal):
        export.export(fp16_base_dir, tmp_path / "a", tmp_path / "out")
    _assert_nothing_written(tmp_path, tmp_path / "out")
    out = export.export(fp16_base_dir, tmp_path / "a", tmp_path / "out", dtype="fp32")
    written = _written(out)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in written.values())
    rw = attach(AutoModelForCausalLM.from_pretrained(fp16_base_dir, dtype=torch.float32).eval(), tmp_path / "a")
    rw.set(1.0)
    assert max(float(rw.model.get_parameter(n).abs().max()) for n in rw.update.deltas) > 65504  # really overflows
    for name, w in rw.model.state_dict().items():
        assert torch.equal(written[name], w), name


def test_adapter_format_dtype_rounds_the_fp32_scaling_once(base, base_dir, tmp_path):
    make_adapter("oft", base, tmp_path / "a")
    full = export.export(base_dir, tmp_path / "a", tmp_path / "fp32", alpha=0.4, fmt="adapter")
    half = export.export(base_dir, tmp_path / "a", tmp_path / "bf16", alpha=0.4, fmt="adapter", dtype="bf16")
    want, got = load_file(full / "adapter_model.safetensors"), load_file(half / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    for key, t in want.items():
        assert got[key].dtype == torch.bfloat16 and torch.equal(got[key], t.to(torch.bfloat16)), key
    PeftModel.from_pretrained(copy.deepcopy(base), half)  # peft loads it


def test_cli_dtype_with_verify(base, base_dir, tmp_path, capsys):
    from rewind.cli import main

    make_adapter("lora", base, tmp_path / "a")
    with pytest.raises(SystemExit) as done:
        main(
            [
                "export",
                "--base",
                str(base_dir),
                "--adapter",
                str(tmp_path / "a"),
                "--out",
                str(tmp_path / "out"),
                "--alpha",
                "0.5",
                "--dtype",
                "fp16",
                "--verify",
            ]
        )
    printed = capsys.readouterr().out
    assert done.value.code == 0 and "as float16" in printed and "verified:" in printed
    assert {t.dtype for t in _written(tmp_path / "out").values()} == {torch.float16}


def test_stale_temp_dirs_go_live_and_foreign_ones_stay(base, base_dir, tmp_path):
    """A killed export's dir (its lock free) goes at the next export there; one whose writer still holds the lock
    stays, and so does a hidden dir without rewind's lock file."""
    make_adapter("lora", base, tmp_path / "a")
    parent = tmp_path / "exports"
    dirs = {kind: parent / f".point.tmp-{kind}" for kind in ("stale", "live", "foreign")}
    for kind, d in dirs.items():
        d.mkdir(parents=True)
        (d / "model-00001-of-00002.safetensors").write_bytes(b"partial")
        if kind != "foreign":
            (d / outdir.LOCK).touch()
    live = os.open(dirs["live"] / outdir.LOCK, os.O_RDWR)
    fcntl.flock(live, fcntl.LOCK_EX)  # as the export writing it would
    try:
        export.export(base_dir, tmp_path / "a", parent / "point", alpha=0.5)
    finally:
        os.close(live)
    assert not dirs["stale"].exists() and dirs["live"].is_dir() and dirs["foreign"].is_dir()
    assert sorted(p.name for p in (parent / "point").iterdir() if p.name.startswith(".")) == []  # no lock left


def test_out_never_touches_an_input(base, base_dir, tmp_path):
    make_adapter("lora", base, tmp_path / "a")
    before = {p: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    for out, how in [
        (tmp_path / "a", "is the --adapter dir"),
        (tmp_path, "contains the --adapter dir"),
        (tmp_path / "a" / "x", "lies inside the --adapter dir"),
        (base_dir / "x", "lies inside the --base dir"),
    ]:
        with pytest.raises(RewindError, match=how):
            export.export(base_dir, tmp_path / "a", out, force=True)
    assert before == {p: p.read_bytes() for p in (tmp_path / "a").iterdir()}


def test_a_filesystem_without_locks_still_exports(base, base_dir, tmp_path, monkeypatch):
    """Where flock is refused (some network filesystems), the temp dir has no lock file, so no cleaner takes it."""
    make_adapter("lora", base, tmp_path / "a")
    seen = []

    def no_locks(fd, op):
        seen.extend(p.name for p in (tmp_path / "x").iterdir() if p.name.startswith(".point.tmp-"))
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = export.export(base_dir, tmp_path / "a", tmp_path / "x" / "point", alpha=0.5)
    assert seen and (out / "README.md").is_file() and sorted(p.name for p in (tmp_path / "x").iterdir()) == ["point"]
    assert not list(out.glob(".rewind*"))


@pytest.mark.parametrize(("bad", "message"), [({"fmt": "gguf"}, "--format gguf"), ({"dtype": "int8"}, "--dtype int8")])
def test_export_spec_refuses_a_bad_format_or_dtype_before_reading_anything(bad, message, tmp_path):
    with pytest.raises(RewindError, match=message):
        export.ExportSpec(adapter=tmp_path / "absent", base=tmp_path / "absent", out=tmp_path / "out", **bad)
    assert not (tmp_path / "out").exists()
