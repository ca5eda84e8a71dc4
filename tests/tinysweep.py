"""A sweepable tiny base: a random 2-layer Llama with SmolLM2's tokenizer (chat template included) and a LoRA.

Shared by the sweep, diagnostics and reliability tests.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tiny import randomize
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rewind import models

# One cheap task per role keeps a point at well under a second on CPU.
TARGET, GENERAL = "math_offline_basic_arithmetic", "general_offline_truthfulqa_mc1"


def chat_base(dest: Path, layers: int = 2) -> LlamaForCausalLM:
    """A random Llama with SmolLM2's tokenizer, saved with that tokenizer into `dest` (a loadable --base dir)."""
    tokenizer = AutoTokenizer.from_pretrained(models.embedded_dir())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    base = LlamaForCausalLM(config)
    base.generation_config.max_new_tokens = 8  # short generations keep CPU sweeps fast
    base.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return base


def make(root: Path, layers: int = 2) -> tuple[Path, Path]:
    """(base dir with tokenizer, LoRA adapter dir) under `root`."""
    base = chat_base(root / "tbase", layers)
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    randomize(peft_model, 0.2)
    peft_model.save_pretrained(root / "tlora")
    return root / "tbase", root / "tlora"


def sweep_args(base: Path, adapter: Path, out: Path, *extra: str, limit: int = 2) -> list[str]:
    return [
        "sweep",
        "--base",
        str(base),
        "--adapter",
        str(adapter),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--limit",
        str(limit),
        "--target",
        TARGET,
        "--general",
        GENERAL,
        *extra,
    ]


def read_jsonl(path: Path) -> list[dict]:
    """A JSONL log's lines (results.jsonl, items.jsonl)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


# sweep.json of a hand-made sweep (report tests that build their lines without a model): target suite t, general g.
RECORD = {
    "run": "r",
    "paths": ["linear"],
    "method": "lora",
    "spec": {
        "alphas": [0, 0.5, 1],
        "target": ["t"],
        "general": ["g"],
        "select": "max-target-within",
        "tolerance": 1.0,
        "weight": 0.5,
        "base": "b",
        "adapter": "a",
        "layers": None,
        "cayley_scale": "linear",
    },
}
