"""Tiny random Llama models and peft adapters of every method, with random non-zero (not identity-init) weights."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from peft import (
    AdaLoraConfig,
    BOFTConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    MissConfig,
    OFTConfig,
    VeraConfig,
    get_peft_model,
)
from transformers import LlamaConfig, LlamaForCausalLM

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def tiny_base(seed: int = 0, layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


# name -> (peft config, std of the random trained parameters)
ADAPTERS = {
    "lora": (LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), 0.1),
    "rslora": (
        LoraConfig(
            r=4,
            lora_alpha=8,
            use_rslora=True,
            target_modules=TARGETS,
            rank_pattern={"v_proj": 2},
            alpha_pattern={"down_proj": 3},
        ),
        0.1,
    ),
    "dora": (LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=TARGETS), 0.1),
    "adalora": (AdaLoraConfig(init_r=6, target_r=4, lora_alpha=8, total_step=10, target_modules=TARGETS), 0.1),
    "vera": (VeraConfig(r=8, target_modules=TARGETS), 0.5),
    "ia3": (IA3Config(target_modules=TARGETS, feedforward_modules=["down_proj"]), 0.1),
    "miss": (MissConfig(r=16, target_modules=TARGETS), 0.05),
    "miss-bat": (MissConfig(r=16, init_weights="bat", target_modules=["q_proj", "up_proj"]), 0.05),
    "miss-mini": (MissConfig(r=16, mini_r=16, init_weights="mini", target_modules=TARGETS), 0.05),
    "oft": (OFTConfig(r=0, oft_block_size=16, target_modules=TARGETS), 0.05),
    "oft-exact": (OFTConfig(r=0, oft_block_size=16, use_cayley_neumann=False, target_modules=TARGETS), 0.05),
    "oft-coft": (OFTConfig(r=0, oft_block_size=16, coft=True, eps=2e-2, target_modules=TARGETS), 0.05),
    "oft-share": (OFTConfig(r=0, oft_block_size=16, block_share=True, target_modules=TARGETS), 0.05),
    "lora-save-head": (LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, modules_to_save=["lm_head"]), 0.1),
    "loha": (
        LoHaConfig(r=4, alpha=8, target_modules=TARGETS, rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 3}),
        0.2,
    ),
    # w1 whole; w2 whole where r >= half its larger side (q_proj), low-rank elsewhere
    "lokr": (
        LoKrConfig(r=4, alpha=8, target_modules=TARGETS, rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 3}),
        0.1,
    ),
    "lokr-both": (LoKrConfig(r=2, alpha=3, decompose_both=True, target_modules=TARGETS), 0.2),  # both low-rank
    "boft": (BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=1, target_modules=TARGETS), 0.1),
    "boft-butterfly": (BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=3, target_modules=TARGETS), 0.1),
    "boft-blocknum": (
        BOFTConfig(boft_block_size=0, boft_block_num=4, boft_n_butterfly_factor=2, target_modules=TARGETS),
        0.1,
    ),
}


def randomize(peft_model, std: float, seed: int = 1) -> None:
    """Move every trained parameter off its init, as training would (IA3/DoRA magnitudes around their init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=gen) * std
            if "ia3_l" in name or "magnitude" in name or "vera_lambda" in name or "boft_s" in name:
                p.mul_(1 + noise)
                if "vera_lambda_b" in name:
                    p.add_(noise)  # lambda_b starts at 0
            elif "modules_to_save" in name:
                p.add_(noise)
            else:
                p.copy_(noise)


def make_adapter(kind: str, base, out: Path, seed: int = 1):
    """Save a randomized adapter of `kind` for `base` into `out`; return peft's merged model (the reference)."""
    config, std = ADAPTERS[kind]
    with butterflies(config):
        peft_model = get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
        randomize(peft_model, std, seed)
        peft_model.save_pretrained(out)
        return peft_model.merge_and_unload().eval()


@contextlib.contextmanager
def butterflies(config=None):
    """peft builds, runs and merges more than one BOFT butterfly factor only where its CUDA extension (fbd) loads;
    in here torch.block_diag stands in for it (what peft's CPU branch does for one factor), so peft itself does the
    rest. Does nothing for a `config` with one factor or of another kind."""
    import peft.tuners.boft.layer as boft_layer

    class BlockDiag:
        @staticmethod
        def forward(blocks):  # [factors, D, b, b] -> [[factors, D*b, D*b]]
            return [torch.stack([torch.block_diag(*factor) for factor in blocks])]

    saved = boft_layer.get_fbd_cuda
    if config is None or getattr(config, "boft_n_butterfly_factor", 1) > 1:
        boft_layer.get_fbd_cuda = lambda: BlockDiag
    try:
        yield
    finally:
        boft_layer.get_fbd_cuda = saved


def make_full(base, out: Path, seed: int = 1):
    """A full finetune: some tensors perturbed, saved as an HF checkpoint."""
    tuned = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "layers.1." in name or "norm" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    tuned.save_pretrained(out)
    return tuned


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def logits(model, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.cpu()
