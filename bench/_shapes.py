"""Model shapes and random adapters shared by the benchmarks (alpha_switch.py, export_rss.py).

A shape is an architecture without weights: the recipe presets' `architecture:` fields (smollm2, qwen, llama) or
a bench-local one below (llama1b). `build` makes a random model of a shape in memory; `write_checkpoint` writes a
random sharded safetensors checkpoint of a shape without ever holding the model on the host (one tensor at a time),
so a 7B-shaped base costs its disk writes, not a 15 GB model init.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

# Shapes no recipe preset has. Llama-3.2-1B's config.json fields (meta-llama/Llama-3.2-1B).
LOCAL_SHAPES = {
    "llama1b": {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "tie_word_embeddings": True,
    },
    # Qwen2.5-0.5B's config.json fields (Qwen/Qwen2.5-0.5B): a ~1 GB bf16 checkpoint, export_rss's CPU size.
    "qwen0.5b": {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
    # Qwen2.5-7B's layers (Qwen/Qwen2.5-7B's config.json) cut to 3, with a small vocabulary: the 7B's tensor sizes
    # (136 MB MLP matrices, past glibc's 32 MiB mmap threshold) in a 1.5 GB checkpoint a 2-core CPU exports.
    "qwen7b-3layers": {
        "model_type": "qwen2",
        "vocab_size": 8192,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 3,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
    },
    # Small enough for a 2-core CPU to run many passes (grid_forward.py's default); not a real model's shape.
    "llama-small": {
        "model_type": "llama",
        "vocab_size": 8192,
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    },
}
SHAPE_NAMES = {
    "llama-small": "Llama 256x4 (bench-local)",
    "smollm2": "SmolLM2-135M",
    "llama1b": "Llama-3.2-1B",
    "qwen0.5b": "Qwen2.5-0.5B",
    "qwen7b-3layers": "Qwen2.5-7B, 3 layers (bench-local)",
    "llama": "Llama-3.2-3B",
    "qwen": "Qwen2.5-7B",
}
# Adapter methods by name: (peft config class, its options). Targets are chosen per run (--targets).
METHODS = {
    "lora": ("LoraConfig", {"r": 8}),
    "lora16": ("LoraConfig", {"r": 16}),
    "oft": ("OFTConfig", {"r": 0, "oft_block_size": 32}),
}
ALL_LINEAR = "all-linear"


def config(shape: str):
    """The transformers config of a shape (a preset alias or a LOCAL_SHAPES name)."""
    from rewind.train.budget import model_config

    return model_config(dict(LOCAL_SHAPES[shape]) if shape in LOCAL_SHAPES else shape)


def build(shape: str, device: str, dtype: torch.dtype):
    """A random model of `shape` on `device` (transformers' own init, done on the device)."""
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(config(shape), dtype=dtype).eval()


def parse_targets(targets: str) -> str | list[str]:
    """`all-linear` or a comma list of module names (q_proj,v_proj)."""
    return ALL_LINEAR if targets == ALL_LINEAR else [t for t in targets.split(",") if t]


def adapter_config(method: str, targets: str = ALL_LINEAR):
    import peft

    cls, options = METHODS[method]
    return getattr(peft, cls)(target_modules=parse_targets(targets), **options)


def targets_label(targets: str) -> str:
    return targets if targets == ALL_LINEAR else "+".join(parse_targets(targets))


def _meta_model(shape: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config(shape), dtype=dtype)


def saved_tensors(model) -> dict[str, torch.Tensor]:
    """What save_pretrained writes: the state dict without tied duplicates (lm_head under tied embeddings)."""
    unique = {name for name, _ in model.named_parameters()}
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return {name: t for name, t in model.state_dict().items() if name in unique or name not in every}


def parse_size(size: str | int) -> int:
    if isinstance(size, int) or str(size).isdigit():
        return int(size)
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    text = str(size).strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * units[unit])
    raise ValueError(f"size {size!r}: expected e.g. 5GB, 500MB or a byte count")


class _Filler:
    """Random values for a tensor: generated on a GPU when there is one, else copied from a random pool (CPU
    normal_ runs ~0.1 G elements/s on two cores; a copy ~1 G/s). Values do not change what is measured."""

    def __init__(self, device: str, dtype: torch.dtype, seed: int = 0, pool: int = 1 << 24):
        self.device, self.dtype = device, dtype
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.pool = (
            None if device.startswith("cuda") else torch.empty(pool, dtype=dtype).normal_(0, 0.02, generator=self.gen)
        )
        self.offset = 0

    def __call__(self, shape) -> torch.Tensor:
        if self.pool is None:
            return torch.empty(shape, dtype=self.dtype, device=self.device).normal_(0, 0.02, generator=self.gen).cpu()
        out = torch.empty(shape, dtype=self.dtype)
        flat, n, done = out.view(-1), out.numel(), 0
        while done < n:  # tile the pool, starting where the last tensor stopped (neighbours differ)
            take = min(n - done, self.pool.numel() - self.offset)
            flat[done : done + take].copy_(self.pool[self.offset : self.offset + take])
            done += take
            self.offset = (self.offset + take) % self.pool.numel()
        return out


def write_checkpoint(
    shape: str,
    out: Path,
    max_shard_size: str | int = "5GB",
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """A random HF checkpoint of `shape` in `out` (config.json + safetensors shards + index), written tensor by
    tensor: host memory holds one tensor, never the model. Shards are cut like save_pretrained cuts them (in state
    dict order, a new shard when the next tensor would pass max_shard_size). Returns what was written."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = _meta_model(shape, dtype)
    tensors = saved_tensors(model)
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    fill = _Filler(device, dtype, seed)
    weight_map, shard_bytes = {}, {}
    for file, members in zip(names, shards):
        # one shard's tensors at a time: save_file writes a dict (at 5 GB shards: at most 5 GB on the host)
        data = {name: fill(tensors[name].shape) for name in members}
        save_file(data, out / file, metadata={"format": "pt"})
        shard_bytes[file] = (out / file).stat().st_size
        weight_map.update(dict.fromkeys(members, file))
        del data
    if len(names) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    cfg = model.config
    cfg.architectures = [type(model).__name__]
    cfg.dtype = dtype
    cfg.save_pretrained(out)
    return {
        "shards": shard_bytes,
        "params": sum(t.numel() for t in tensors.values()),
        "bytes": sum(shard_bytes.values()),
        "create_s": time.perf_counter() - start,
    }


def write_adapter(
    shape: str, method: str, out: Path, targets: str = ALL_LINEAR, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> dict:
    """A random peft adapter for `shape` in `out`, as get_peft_model + save_pretrained would write it, built on a
    meta-device model (no base weights): every trainable tensor random (scale 0.01), lora_B included."""
    from peft import get_peft_model

    start = time.perf_counter()
    peft_model = get_peft_model(_meta_model(shape, dtype), adapter_config(method, targets))
    gen = torch.Generator().manual_seed(seed)
    state = {
        name: (torch.randn(p.shape, generator=gen) * 0.01).to(p.dtype)
        for name, p in peft_model.named_parameters()
        if p.requires_grad
    }
    peft_model.save_pretrained(out, state_dict=state)
    weights = Path(out) / "adapter_model.safetensors"
    return {
        "adapter_bytes": weights.stat().st_size,
        "adapter_tensors": len(state),
        "adapter_s": time.perf_counter() - start,
    }
