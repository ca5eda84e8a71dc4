"""End to end on the embedded SmolLM2-135M-Instruct (bf16): resident switch vs exported checkpoint."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, OFTConfig, get_peft_model
from transformers import AutoModelForCausalLM

from rewind import engine, export, models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_dir():
    return models.embedded_dir()


@pytest.fixture(scope="module")
def adapters(smol_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("smol")
    base = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32)
    made = {}
    for name, config, std in [
        ("lora", LoraConfig(r=8, target_modules="all-linear"), 0.02),
        ("oft", OFTConfig(r=0, oft_block_size=32, target_modules="all-linear"), 0.01),
    ]:
        peft_model = get_peft_model(base, config)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in peft_model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn_like(p) * std)
        peft_model.save_pretrained(root / name)
        base = peft_model.unload()
        made[name] = root / name
    return made


@pytest.mark.parametrize("name", ["lora", "oft"])
def test_export_reloads_to_resident_logits(name, adapters, tmp_path):
    rw = engine.open("smollm2", adapters[name], device="cpu", dtype="bf16")
    assert rw.update.method.name == name and len(rw.update.deltas) == 30 * 7
    prompt = rw.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 17 + 25?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        base_logits = rw.model(**prompt).logits
        rw.set(0.5)
        resident = rw.model(**prompt).logits
    assert not torch.equal(base_logits, resident)
    out = export.export("smollm2", adapters[name], tmp_path / "out", alpha=0.5)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**prompt).logits, resident, rtol=0, atol=0)
    assert reloaded.generation_config.eos_token_id is not None
