"""Issue 7, export verification: `write(plan, verify=True)` reloads what it wrote and compares logits with the
in-memory model at the same point; a bad checkpoint is refused before it reaches --out."""

from __future__ import annotations

import pytest
import torch
from tiny import make_adapter, tiny_base
from transformers import AutoModelForCausalLM

from rewind import export
from rewind.errors import RewindError
from rewind.schedule import Schedule


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    model = tiny_base()
    model.save_pretrained(root / "fp32", max_shard_size="200KB")
    model.to(torch.bfloat16).save_pretrained(root / "bf16")
    for kind in ("lora", "oft", "ia3"):
        make_adapter(kind, tiny_base(), root / kind)
    return root


@pytest.mark.parametrize(
    "kind,fmt,schedule",
    [
        ("lora", "merged", None),
        ("oft", "merged", "ramp"),
        ("ia3", "merged", None),
        ("lora", "adapter", None),
        ("oft", "adapter", None),
    ],
)
def test_verify_passes_and_is_recorded(kind, fmt, schedule, bases, tmp_path):
    plan = export.plan(
        export.ExportSpec(
            adapter=bases / kind,
            base=bases / "fp32",
            out=tmp_path / "out",
            alpha=0.6,
            fmt=fmt,
            schedule=Schedule.parse(schedule),
        )
    )
    out = export.write(plan, verify=True)
    assert plan.verified is not None and plan.verified <= export.VERIFY_TOLERANCE[torch.float32]
    if fmt == "merged":
        assert plan.verified == 0.0  # same path code, same dtype: bit for bit
    assert f"| verified | reloaded logits within {plan.verified:.3g}" in (out / "README.md").read_text()


def test_verify_off_by_default(bases, tmp_path):
    plan = export.plan(export.ExportSpec(adapter=bases / "lora", base=bases / "fp32", out=tmp_path / "out", alpha=0.6))
    export.write(plan)
    assert plan.verified is None and "| verified |" not in (tmp_path / "out" / "README.md").read_text()


def test_verify_in_bf16(bases, tmp_path):
    out = export.export(bases / "bf16", bases / "oft", tmp_path / "out", alpha=0.3, verify=True)
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert "| verified |" in (out / "README.md").read_text()


@pytest.mark.parametrize("damage", ["perturb", "drop-config-field"])
def test_verify_refuses_a_wrong_checkpoint(damage, bases, tmp_path, monkeypatch):
    """A writer that gets one tensor slightly wrong (or a config copy that changes the model) is caught; nothing
    reaches --out and the temp dir is gone."""
    from rewind import tensorio

    real = tensorio.ShardWriter.write

    def bad_write(self, name, tensor):
        if damage == "perturb" and "layers.1.self_attn.q_proj" in name:
            tensor = tensor + 1e-2
        real(self, name, tensor)

    monkeypatch.setattr(tensorio.ShardWriter, "write", bad_write)
    if damage == "drop-config-field":
        real_copy = export.shutil.copy2

        def bad_copy(src, dst, *a, **kw):
            real_copy(src, dst, *a, **kw)
            if str(dst).endswith("config.json") and not str(dst).endswith("generation_config.json"):
                text = open(dst).read().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 0.5')
                open(dst, "w").write(text)

        monkeypatch.setattr(export.shutil, "copy2", bad_copy)
    plan = export.plan(export.ExportSpec(adapter=bases / "lora", base=bases / "fp32", out=tmp_path / "out", alpha=0.6))
    with pytest.raises(RewindError, match=r"verify: .* differ from the in-memory model at linear\(alpha=0.6\)"):
        export.write(plan, verify=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    export.write(plan)  # without verify the damage goes through: verify is what caught it
    assert (tmp_path / "out" / "README.md").is_file()


def test_verify_prompt_is_fixed_and_in_vocabulary():
    ids = export.verify_prompt(128)
    assert torch.equal(ids, export.verify_prompt(128)) and ids.shape == (1, 16)
    assert int(ids.min()) >= 0 and int(ids.max()) < 128 and len(set(ids.tolist()[0])) > 8
