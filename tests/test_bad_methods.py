"""Issue 13, methods rewind must refuse rather than read wrong: inits that rewrote the base, adapter exports peft
would load as another point. Each is one `rewind: error:` line naming the init or the limit, exit 2, nothing written,
inputs untouched.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import KasaConfig, LoraConfig, OFTConfig, get_peft_model
from tiny import make_adapter, randomize, tiny_base

from rewind.cli import main

C = "adapter_config.json"


def _init(value):
    """peft's config of that init on an ordinary LoRA: rewind decides from adapter_config.json alone (LoftQ itself
    needs bitsandbytes, which this machine lacks)."""

    def damage(a: Path):
        (a / C).write_text(json.dumps({**json.loads((a / C).read_text()), "init_lora_weights": value}))

    return damage


EXPORT = ["export", "--base", "{base}", "--adapter", "{a}", "--out", "{out}"]
CASES = [  # id, argv, adapter, damage, what the line must say
    ("loftq", EXPORT, "lora", _init("loftq"), ("init_lora_weights 'loftq'", "quantization", "merge_and_unload")),
    (
        "loftq-inspect",
        ["inspect", "--base", "{base}", "--adapter", "{a}"],
        "lora",
        _init("loftq"),
        ("init_lora_weights 'loftq'",),
    ),
    ("unknown-init", EXPORT, "lora", _init("fancy_svd"), ("init_lora_weights 'fancy_svd'", "not an init rewind knows")),
    ("kasa", EXPORT, "kasa", None, ("KaSA (kasa_config)", "truncated the base weights", "--adapter")),
    ("lora-ga-unconverted", EXPORT, "lora", _init("lora_ga"), ("residual base (lora_ga init)", "--init-adapter")),
    ("corda-unconverted", EXPORT, "lora", _init("corda"), ("residual base (corda init)", "--init-adapter")),
    (
        "coft-past-ball",
        [*EXPORT, "--format", "adapter", "--alpha", "1.5", "--allow-extrapolation"],
        "coft",
        None,
        ("coft generator", "leaves peft's ball", "--format merged"),
    ),
    (
        "coft-past-ball-sqrt",
        [*EXPORT, "--format", "adapter", "--alpha", "2", "--allow-extrapolation", "--cayley-scale", "sqrt"],
        "coft",
        None,
        ("leaves peft's ball", "--format merged"),
    ),
    (
        "dora-dense-adapter",
        [*EXPORT, "--format", "adapter", "--path", "dense"],
        "dora",
        None,
        ("dora's own path (dora)", "--format merged"),
    ),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    base = tiny_base()
    base.save_pretrained(root / "base")
    make_adapter("lora", base, root / "lora")
    make_adapter("dora", base, root / "dora")
    kasa = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, kasa_config=KasaConfig(), target_modules=["q_proj"]))
    randomize(kasa, 0.1)
    kasa.save_pretrained(root / "kasa")
    coft = get_peft_model(
        copy.deepcopy(base), OFTConfig(r=0, oft_block_size=16, coft=True, eps=2e-2, target_modules=["q_proj"])
    )
    randomize(coft, 0.05)  # far outside the ball: peft projects every block onto it, as training leaves them
    with torch.no_grad():
        for module in coft.modules():
            if "default" in getattr(module, "oft_R", {}):
                rot = module.oft_R["default"]
                rot.weight.copy_(rot._project_batch(rot.weight, eps=rot.eps))
    coft.save_pretrained(root / "coft")
    return root


def _snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(d.rglob("*"))
    }


@pytest.mark.parametrize("argv,adapter,damage,expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused(argv, adapter, damage, expect, world, tmp_path, capsys):
    shutil.copytree(world / adapter, tmp_path / "a")
    if damage:
        damage(tmp_path / "a")
    before = _snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(base=world / "base", a=tmp_path / "a", out=tmp_path / "out") for arg in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("rewind: error: "), lines
    assert all(e in lines[0] for e in expect), (lines[0], expect)
    assert _snapshot(tmp_path) == before, "something was written or an input changed"


@pytest.mark.parametrize("init", ["gaussian", "eva", "orthogonal", "mica", True, False])
def test_inits_that_keep_the_base_read_as_lora(init, world, tmp_path, capsys):
    """The inits peft leaves the base alone for: s*B@A is the whole update, no --init-adapter asked."""
    shutil.copytree(world / "lora", tmp_path / "a")
    _init(init)(tmp_path / "a")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "--base", str(world / "base"), "--adapter", str(tmp_path / "a")])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert "lora" in capsys.readouterr().out
