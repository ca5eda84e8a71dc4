"""Issue 7, security: only safetensors and JSON/YAML are read from adapters, checkpoints and recipes; no pickle, no
remote code; values inside adapters, indexes and recipes are never used as paths out of their own dirs."""

from __future__ import annotations

import ast
import builtins
import json
import pickle
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from tiny import make_adapter, tiny_base

from rewind import adapters, checkpoint, export, models
from rewind.errors import RewindError
from rewind.train import load_recipe

PACKAGE = Path(__file__).resolve().parents[1] / "rewind"


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_no_unsafe_loaders_in_the_package():
    """No torch.load / pickle / eval / exec / yaml.load / trust_remote_code=True anywhere in rewind/."""
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(
                    n and n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve")
                    for n in names
                ):
                    found.append(f"{where} imports a pickle module")
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name in (
                    "eval",
                    "exec",
                    "torch.load",
                    "yaml.load",
                    "yaml.unsafe_load",
                    "yaml.full_load",
                    "numpy.load",
                    "np.load",
                ) or name.endswith(".load_state_dict_from_url"):
                    found.append(f"{where} calls {name}")
                for kw in node.keywords:
                    if kw.arg == "trust_remote_code" and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is False
                    ):
                        found.append(f"{where} passes trust_remote_code")
                    if kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is False:
                        found.append(f"{where} passes weights_only=False")
    assert not found, found


def test_model_weights_load_through_safetensors_only():
    """Every AutoModel*.from_pretrained in rewind/ passes use_safetensors=True (or reads a GGUF): no .bin is ever
    unpickled by transformers on rewind's behalf."""
    calls = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and _dotted(node.func).startswith("AutoModel")
                and _dotted(node.func).endswith(".from_pretrained")
            ):
                kws = {kw.arg: kw.value for kw in node.keywords}
                safe = isinstance(kws.get("use_safetensors"), ast.Constant) and kws["use_safetensors"].value is True
                calls.append((f"{path.name}:{node.lineno}", safe or "gguf_file" in kws))
    assert calls and all(ok for _, ok in calls), calls


class _Payload:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return builtins.open, (str(self.canary), "w")


@pytest.fixture
def tiny(tmp_path):
    base = tiny_base()
    base.save_pretrained(tmp_path / "base")
    make_adapter("lora", base, tmp_path / "lora")
    return tmp_path


def test_pickled_base_is_refused_and_never_unpickled(tiny, monkeypatch):
    canary = tiny / "pwned"
    bad = tiny / "binbase"
    bad.mkdir()
    shutil.copy(tiny / "base" / "config.json", bad / "config.json")
    (bad / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(canary)))
    (bad / "tokenizer.json").write_text("{}")  # past the tokenizer check: the weights are what is tested
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: object())
    with pytest.raises(RewindError, match="safetensors weights only"):
        models.load_base(str(bad), "cpu", "fp32")
    with pytest.raises(RewindError, match="no safetensors weights"):
        export.plan(export.ExportSpec(adapter=tiny / "lora", base=bad, out=tiny / "out"))
    assert not canary.exists()


def test_pickled_adapter_is_refused_and_never_unpickled(tiny):
    canary = tiny / "pwned"
    (tiny / "lora" / "adapter_model.safetensors").unlink()
    (tiny / "lora" / "adapter_model.bin").write_bytes(pickle.dumps(_Payload(canary)))
    with pytest.raises(RewindError, match="rewind reads no pickle files"):
        export.plan(export.ExportSpec(adapter=tiny / "lora", base=tiny / "base", out=tiny / "out"))
    assert not canary.exists() and not (tiny / "out").exists()


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/hostname", "sub/model.safetensors", ".."])
def test_checkpoint_index_cannot_point_outside_the_base(shard, tiny):
    base = tiny / "base"
    names = list(load_file(base / "model.safetensors"))
    (base / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {**{n: "model.safetensors" for n in names}, names[0]: shard}})
    )
    (tiny / "outside.safetensors").write_bytes((base / "model.safetensors").read_bytes())  # would even load
    with pytest.raises(RewindError, match="is not a file name in"):
        checkpoint.shards(base)


@pytest.mark.parametrize("preset", ["../../../tmp/evil", "/tmp/evil", "presets/../smollm2", ".hidden"])
def test_recipe_preset_is_a_name_not_a_path(preset, tmp_path):
    Path("/tmp/evil.yaml").write_text("seed: 1\n") if preset.endswith("evil") else None
    try:
        with pytest.raises(RewindError, match="not a path"):
            load_recipe("sft/lora", [f"preset={preset}"])
    finally:
        Path("/tmp/evil.yaml").unlink(missing_ok=True)


def test_adapter_values_are_never_paths(tiny, monkeypatch, tmp_path):
    """A hostile adapter_config/tensor key: `../..` in base_model_name_or_path is not looked up anywhere, a
    traversing tensor key is only a name that is not in the base, and adapter export writes fixed file names."""
    looked_up = []
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name, **k: looked_up.append(repo))
    a = tiny / "lora"
    config = json.loads((a / "adapter_config.json").read_text())
    config.update(base_model_name_or_path="../../../etc", auto_mapping=None)
    (a / "adapter_config.json").write_text(json.dumps(config))
    (a / "notes.txt").write_text("not copied")
    out = export.export(tiny / "base", a, tiny / "exported", alpha=0.5, fmt="adapter")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert looked_up == []  # not a hub id: no cache lookup, no path

    config["base_model_name_or_path"] = "org/model"  # a hub id is looked up in the HF cache only, by id
    (a / "adapter_config.json").write_text(json.dumps(config))
    export.plan(export.ExportSpec(adapter=a, base=tiny / "base", out=tiny / "unused"))
    assert looked_up == ["org/model"]

    tensors = load_file(a / "adapter_model.safetensors")
    tensors["base_model.model.../../../etc/passwd.lora_A.weight"] = next(iter(tensors.values())).clone()
    save_file(tensors, a / "adapter_model.safetensors")
    with pytest.raises(RewindError, match="is not in the base model"):
        export.plan(export.ExportSpec(adapter=a, base=tiny / "base", out=tiny / "out2"))
    assert not (tiny / "out2").exists()


def test_architecture_check_reads_no_files_named_by_the_adapter(tiny, monkeypatch):
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    adapters.check_architecture(
        {
            "peft_type": "LORA",
            "base_model_name_or_path": str(tiny / "base"),
            "auto_mapping": {"base_model_class": "LlamaForCausalLM"},
        },
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
        tiny / "lora",
    )
    assert opened == []
