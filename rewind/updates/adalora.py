"""AdaLoRA's format (peft_type ADALORA): W1 = W0 + B (A * E) * lora_alpha / (ranknum + 1e-5), a LowRank update."""

from __future__ import annotations

from .base import Field, Kind, number, only, positive_int
from .lora import LowRank


def read(module, parts, config, shapes, shared):
    only(parts, {"lora_A", "lora_B", "lora_E"}, module)
    A = parts["lora_A"]
    # peft divides by ranknum, which stays init_r when rank allocation prunes rows (rank_pattern) away.
    ranknum = float(config.get("init_r") or A.shape[0])
    scale = (config["lora_alpha"] if config["lora_alpha"] > 0 else float(A.shape[0])) / (ranknum + 1e-5)
    return {f"{module}.weight": LowRank(parts["lora_B"], A * parts["lora_E"], scale)}


def scale(parts, delta, alpha, w0, **options):
    return {"lora_B": parts["lora_B"] * alpha}


# (AdaLoRA's rank_pattern holds masks, not ranks: it is not read.)
KIND = Kind(
    "ADALORA",
    read,
    prefixes=("lora_",),
    fields=(
        Field("init_r", lambda v: v is None or positive_int(v), "a positive integer"),
        Field("lora_alpha", number, "a number", required=True),
    ),
    scale=scale,
)
