"""The one method table: method -> peft config, natural path, how it is recognised.

Adding a method touches this table and, if its update has a new shape, one reader in `adapters.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import RewindError

LINEAR, CAYLEY = "linear", "cayley"


@dataclass(frozen=True)
class Method:
    name: str
    peft_type: str | None  # None: a full finetune (a whole checkpoint, not an adapter)
    natural_path: str
    summary: str
    config_class: str | None = None  # name of the peft config class
    defaults: dict[str, Any] = field(default_factory=dict)
    # Training replaces the base by a residual W0 - s*B0@A0; `rewind train` saves such adapters converted (rank 2r,
    # relative to W0), so readers never see the residual.
    residual_init: bool = False

    def peft_config(self, **overrides: Any):
        """The peft config for training this method; `overrides` replace the defaults."""
        if self.config_class is None:
            raise RewindError(f"{self.name} trains the whole model: it has no peft config")
        import peft

        return getattr(peft, self.config_class)(**{**self.defaults, **overrides})


_ALL_LINEAR = "all-linear"
_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": _ALL_LINEAR}

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("full", None, LINEAR, "full finetune: every weight trains"),
        Method("lora", "LORA", LINEAR, "low-rank update s*B@A", "LoraConfig", _LORA),
        Method("rslora", "LORA", LINEAR, "LoRA with s = alpha/sqrt(r)", "LoraConfig", {**_LORA, "use_rslora": True}),
        Method("dora", "LORA", LINEAR, "LoRA with a learned per-row magnitude", "LoraConfig",
               {**_LORA, "use_dora": True}),
        Method("pissa", "LORA", LINEAR, "LoRA initialised on the principal singular components (residual base)",
               "LoraConfig", {**_LORA, "init_lora_weights": "pissa"}, residual_init=True),
        Method("milora", "LORA", LINEAR, "LoRA initialised on the minor singular components (residual base)",
               "LoraConfig", _LORA, residual_init=True),
        Method("keeplora", "LORA", LINEAR, "LoRA kept away from the base's principal subspace", "LoraConfig", _LORA),
        Method("adalora", "ADALORA", LINEAR, "SVD-form LoRA with adaptive rank", "AdaLoraConfig",
               {"init_r": 12, "target_r": 8, "lora_alpha": 16, "target_modules": _ALL_LINEAR}),
        Method("vera", "VERA", LINEAR, "shared random projections, trained scaling vectors", "VeraConfig",
               {"r": 256, "target_modules": _ALL_LINEAR}),
        Method("miss", "MISS", LINEAR, "shared block update tiled over the weight", "MissConfig",
               {"r": 64, "target_modules": _ALL_LINEAR}),
        Method("ia3", "IA3", LINEAR, "learned rescaling of activations", "IA3Config",
               {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
        Method("oft", "OFT", CAYLEY, "block-diagonal orthogonal rotation, Cayley of a skew generator", "OFTConfig",
               {"r": 0, "oft_block_size": 32, "target_modules": _ALL_LINEAR}),
    ]
}

# LoRA-family adapters whose training replaced the base by a residual (W0 - s*B0@A0).
RESIDUAL_INITS = ("pissa", "olora", "corda")
SIDECAR = "rewind_adapter.json"  # written by `rewind train` to name methods peft cannot tell apart


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise RewindError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def identify(peft_config: dict[str, Any], sidecar: dict[str, Any] | None = None) -> Method:
    """Which method made an adapter, from its adapter_config.json (and rewind's sidecar, if any)."""
    peft_type = str(peft_config.get("peft_type", "")).upper()
    if sidecar and "method" in sidecar:
        method = get(sidecar["method"])
        if method.peft_type != peft_type:
            raise RewindError(f"{SIDECAR} says {method.name} but adapter_config.json has peft_type {peft_type}")
        return method
    if peft_type == "LORA":
        init = peft_config.get("init_lora_weights")
        if peft_config.get("use_dora"):
            return METHODS["dora"]
        if isinstance(init, str) and init.lower().startswith("pissa"):
            return METHODS["pissa"]
        return METHODS["rslora" if peft_config.get("use_rslora") else "lora"]
    for method in METHODS.values():
        if method.peft_type == peft_type:
            return method
    known = sorted({m.peft_type for m in METHODS.values() if m.peft_type})
    raise RewindError(f"unsupported peft_type {peft_type or '(missing)'!r}; rewind reads {', '.join(known)}")
