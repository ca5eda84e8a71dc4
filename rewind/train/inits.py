"""The LoRA initialisations peft lacks: MiLoRA and KeepLoRA. Both act on a fresh peft LoRA model (adapter "default").

MiLoRA (Wang et al. 2024, arXiv:2406.09044; official code github.com/deondou/reproduce_lora, `svd_init.py`, mode
"min"): PiSSA at the other end of the spectrum. With W0 = U S V^T, the adapter takes the r MINOR singular triplets,
B0 = U_r sqrt(S_r / s), A0 = sqrt(S_r / s) V_r^T (s = lora_alpha / r, as peft's PiSSA does), and the base becomes the
residual W0 - s B0 A0. The adapter is saved converted (rank 2r, relative to W0), like peft's PiSSA conversion.

KeepLoRA (Luo, Zhou, Zhang, Wan, Zhang, Wei, "KeepLoRA: Continual Learning with Residual Gradient Adaptation",
ICLR 2026, arXiv:2601.19659; official code github.com/MaolinLuo/KeepLoRA: `extract_weights.py`,
`extract_gradients.py`, `--freeze_lora_A True`): the update is kept out of the base's principal input subspace.
  1. Principal subspace of W0 (out x in): its top-k right singular vectors V_k, k the number of leading directions
     whose cumulative share of ||W0||_F^2 stays below `energy` (the paper's epsilon_w; counted as the official
     extract_weights.py does, default 0.99).
  2. G = mean loss gradient w.r.t. W0 over `examples` training examples (the official scripts use a fraction of the
     task data, e.g. 20%; 64 here keeps the init cheap), projected off that subspace: G_res = G - G V_k V_k^T.
  3. lora_A = the top-r right singular vectors of G_res (rows), FROZEN; lora_B = 0, trained.
So dW = s B A has its rows in the residual subspace: dW V_k = 0 throughout training, and dW = 0 at step 0 (the base
is not modified). The continual-learning part of the paper (also projecting off earlier tasks' feature subspaces)
has no counterpart in single-task finetuning and is left out.

PEFT-Arena (Sphere-AI-Lab/PEFT-Arena `train/peft_arena_verl/utils/keeplora.py`, which calls itself "a minimal
adaptation") differs in three ways, reproducible here with options: the principal subspace has a fixed rank
(`principal_rank`, theirs 4r), the gradient comes from one micro-batch (`examples`), and lora_B starts at
U_r S_r of G_res instead of 0 (`b_init: gradient`), so its step-0 model is already W0 + s U_r S_r V_r^T.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import RewindError
from .schema import build

ADAPTER = "default"


@dataclass(frozen=True)
class KeepLoRAOptions:
    energy: float = 0.99  # principal subspace: the top singular directions holding this share of ||W0||_F^2
    principal_rank: int = 0  # > 0: a fixed principal rank instead (PEFT-Arena: 4r)
    examples: int = 64  # training examples whose mean loss gradient seeds lora_A
    b_init: str = "zero"  # zero (Luo et al.) | gradient (PEFT-Arena: B = U_r S_r of the projected gradient)
    max_length: int = 1024  # tokens per example in the gradient pass


_OPTIONS = {"keeplora": KeepLoRAOptions}


def options(method: str, raw: dict):
    """The validated `init:` section of a recipe for `method` (None for methods without init options)."""
    cls = _OPTIONS.get(method)
    if cls is None:
        if raw:
            raise RewindError(f"init: method {method} has no init options (only {', '.join(_OPTIONS)} do)")
        return None
    opts = build(cls, raw, "init.")
    if opts.b_init not in ("zero", "gradient"):
        raise RewindError(f"init.b_init: {opts.b_init!r} is not one of zero, gradient")
    if not 0 < opts.energy <= 1 or opts.principal_rank < 0 or opts.examples < 1:
        raise RewindError("init: need 0 < energy <= 1, principal_rank >= 0 and examples >= 1")
    return opts


def lora_layers(model):
    """(name, layer) for every peft LoRA layer carrying the default adapter."""
    from peft.tuners.lora import LoraLayer

    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, LoraLayer) and ADAPTER in getattr(m, "lora_A", {})
    ]


def initialize(model, method: str, opts, tokenizer=None, rows=None, seed: int = 0) -> None:
    """Apply `method`'s own init to a fresh peft model (a no-op for methods peft initialises itself)."""
    if method == "milora":
        milora(model)
    elif method == "keeplora":
        keeplora(model, tokenizer, rows, opts, seed)
    freeze(model, method)


def freeze(model, method: str) -> None:
    """KeepLoRA trains lora_B only; called after init and again after a resume reloads the adapter."""
    if method == "keeplora":
        for _, layer in lora_layers(model):
            layer.lora_A[ADAPTER].weight.requires_grad_(False)


@torch.no_grad()
def milora(model) -> None:
    """Minor-component init (see the module docstring); mirrors peft's `pissa_init` with the spectrum reversed."""
    for name, layer in lora_layers(model):
        base = layer.get_base_layer()
        dtype = base.weight.dtype
        r, scale = layer.r[ADAPTER], layer.scaling[ADAPTER]
        weight = base.weight.float()
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        if r > s.numel():
            raise RewindError(f"milora: rank {r} exceeds {name}'s {s.numel()} singular values")
        root = torch.sqrt(s[-r:] / scale)
        lora_a = root[:, None] * vh[-r:]
        lora_b = u[:, -r:] * root[None, :]
        layer.lora_A[ADAPTER].weight.data = lora_a.to(layer.lora_A[ADAPTER].weight.dtype)
        layer.lora_B[ADAPTER].weight.data = lora_b.to(layer.lora_B[ADAPTER].weight.dtype)
        base.weight.data = (weight - scale * lora_b @ lora_a).to(dtype)


def keeplora(model, tokenizer, rows, opts: KeepLoRAOptions, seed: int = 0) -> None:
    """Gradient-seeded, principal-subspace-free lora_A (see the module docstring)."""
    grads = mean_gradients(model, tokenizer, rows, opts.examples, opts.max_length, seed)
    with torch.no_grad():
        for name, layer in lora_layers(model):
            lora_a, lora_b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            a, b = keeplora_factors(layer.get_base_layer().weight, grads[name], lora_a.shape[0], opts)
            lora_a.data = a.to(lora_a.dtype)
            lora_b.data = b.to(lora_b.dtype)


def keeplora_factors(weight: torch.Tensor, grad: torch.Tensor, r: int, opts: KeepLoRAOptions):
    """(lora_A, lora_B) for one layer: A from the gradient projected off W0's principal input subspace."""
    weight, grad = weight.float(), grad.float().to(weight.device)
    _, s, vh = torch.linalg.svd(weight, full_matrices=False)
    if opts.principal_rank:
        k = min(opts.principal_rank, s.numel())
    else:
        # As the official extract_weights.py: the leading directions whose cumulative energy stays below the threshold.
        share = torch.cumsum(s**2, 0) / (s**2).sum()
        k = max(int((share < opts.energy).sum()), 1)
    basis = vh[:k]  # k x in
    residual = grad - (grad @ basis.T) @ basis
    # An exact SVD (the reference codes use a randomized one with no oversampling, which is loose at q = r).
    u, sv, vh_res = torch.linalg.svd(residual, full_matrices=False)
    q = min(r, sv.numel())
    a = residual.new_zeros(r, residual.shape[1])
    a[:q] = vh_res[:q]
    b = residual.new_zeros(residual.shape[0], r)
    if opts.b_init == "gradient":
        b[:, :q] = u[:, :q] * sv[None, :q]
    return a, b


def mean_gradients(model, tokenizer, rows, examples: int, max_length: int, seed: int) -> dict[str, torch.Tensor]:
    """Mean completion-loss gradient w.r.t. each LoRA layer's base weight, adapters off, over `examples` rows."""
    if rows is None or tokenizer is None:
        raise RewindError("keeplora needs training rows and a tokenizer for its init gradient")
    picked = rows.shuffle(seed=seed).select(range(min(examples, len(rows))))
    layers = lora_layers(model)
    weights = [layer.get_base_layer().weight for _, layer in layers]
    device = weights[0].device
    was_training = model.training
    model.eval()  # no dropout in the estimate
    for w in weights:
        w.requires_grad_(True)
    try:
        with model.disable_adapter(), torch.enable_grad():
            for row in picked:
                ids, labels = completion_tokens(tokenizer, row["prompt"], row["completion"], max_length)
                out = model(input_ids=torch.tensor([ids], device=device), labels=torch.tensor([labels], device=device))
                (out.loss / len(picked)).backward()
        # The returned tensors outlive the `w.grad = None` below: no copy of a 7B model's gradients.
        return {name: w.grad.detach() for (name, _), w in zip(layers, weights, strict=True)}
    finally:
        for w in weights:
            w.requires_grad_(False)
            w.grad = None
        model.train(was_training)


def completion_tokens(tokenizer, prompt: list[dict], completion: list[dict], max_length: int):
    """(input_ids, labels) of a chat example with the prompt masked out, as TRL's completion-only SFT loss."""
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    head = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    labels = [-100] * len(head) + list(full[len(head) :])
    return list(full)[:max_length], labels[:max_length]


def load_converted(model, checkpoint: str | Path) -> None:
    """Load a converted residual-init checkpoint back into the training form (resume).

    The converted adapter is [A | A0] and [B | -B0] (rank 2r): its first r components are the trained A and B.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(checkpoint) / "adapter_model.safetensors"
    if not path.is_file():
        raise RewindError(f"resume: {path} is missing")
    live = get_peft_model_state_dict(model)
    state = {}
    for key, tensor in load_file(path).items():
        if key not in live:
            raise RewindError(f"resume: {path} has {key}, which this model's adapter lacks (another recipe?)")
        rank = live[key].shape[0] if "lora_A" in key else live[key].shape[1]
        state[key] = tensor[:rank] if "lora_A" in key else tensor[:, :rank]
    set_peft_model_state_dict(model, state)
