"""The one method table: method -> its update kind (rewind/updates/), peft config, natural path, how it is recognised.

Adding a method is one row here and, unless an existing kind reads it, one module in `rewind/updates/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import RewindError
from .updates import adalora, boft, full, ia3, loha, lokr, lora, miss, oft, vera
from .updates.base import Kind

LINEAR, CAYLEY, DORA = "linear", "cayley", "dora"


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind  # its update kind: reader, shape check, W1, scaled-adapter export
    natural_path: str
    summary: str
    config_class: str | None = None  # name of the peft config class
    defaults: dict[str, Any] = field(default_factory=dict)
    # Training replaces the base by a residual W0 - s*B0@A0; `rewind train` saves such adapters converted (rank 2r,
    # relative to W0), so readers never see the residual.
    residual_init: bool = False

    @property
    def peft_type(self) -> str | None:
        """None: a full finetune (a whole checkpoint, not an adapter)."""
        return self.kind.peft_type

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
        Method("full", full.KIND, LINEAR, "full finetune: every weight trains"),
        Method("lora", lora.KIND, LINEAR, "low-rank update s*B@A", "LoraConfig", _LORA),
        Method("rslora", lora.KIND, LINEAR, "LoRA with s = alpha/sqrt(r)", "LoraConfig", {**_LORA, "use_rslora": True}),
        Method(
            "dora", lora.KIND, DORA, "LoRA with a learned per-row magnitude", "LoraConfig", {**_LORA, "use_dora": True}
        ),
        Method(
            "pissa",
            lora.KIND,
            LINEAR,
            "LoRA initialised on the principal singular components (residual base)",
            "LoraConfig",
            {**_LORA, "init_lora_weights": "pissa"},
            residual_init=True,
        ),
        Method(
            "milora",
            lora.KIND,
            LINEAR,
            "LoRA initialised on the minor singular components (residual base)",
            "LoraConfig",
            _LORA,
            residual_init=True,
        ),
        Method("keeplora", lora.KIND, LINEAR, "LoRA kept away from the base's principal subspace", "LoraConfig", _LORA),
        Method(
            "adalora",
            adalora.KIND,
            LINEAR,
            "SVD-form LoRA with adaptive rank",
            "AdaLoraConfig",
            {"init_r": 12, "target_r": 8, "lora_alpha": 16, "target_modules": _ALL_LINEAR},
        ),
        Method(
            "vera",
            vera.KIND,
            LINEAR,
            "shared random projections, trained scaling vectors",
            "VeraConfig",
            {"r": 256, "target_modules": _ALL_LINEAR},
        ),
        Method(
            "miss",
            miss.KIND,
            LINEAR,
            "shared block update tiled over the weight",
            "MissConfig",
            {"r": 64, "target_modules": _ALL_LINEAR},
        ),
        Method(
            "ia3",
            ia3.KIND,
            LINEAR,
            "learned rescaling of activations",
            "IA3Config",
            {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
        ),
        Method(
            "oft",
            oft.KIND,
            CAYLEY,
            "block-diagonal orthogonal rotation, Cayley of a skew generator",
            "OFTConfig",
            {"r": 0, "oft_block_size": 32, "target_modules": _ALL_LINEAR},
        ),
        Method(
            "loha",
            loha.KIND,
            LINEAR,
            "Hadamard product of two low-rank updates (LyCORIS)",
            "LoHaConfig",
            {"r": 4, "alpha": 8, "target_modules": _ALL_LINEAR},
        ),
        Method(
            "lokr",
            lokr.KIND,
            LINEAR,
            "Kronecker product of two factors, each whole or low-rank (LyCORIS)",
            "LoKrConfig",
            {"r": 64, "alpha": 128, "decompose_factor": 8, "target_modules": _ALL_LINEAR},
        ),
        Method(
            "boft",
            boft.KIND,
            boft.Boft.name,
            "butterfly-factored orthogonal rotation (Cayley) and an output scale",
            "BOFTConfig",
            {"boft_block_size": 16, "boft_n_butterfly_factor": 1, "target_modules": _ALL_LINEAR},
        ),
    ]
}

# peft's LoRA inits (init_lora_weights, prefixes as peft matches them), by what they do to the base (read in
# peft 0.21's lora/layer.py). Residual: the base becomes W0 - s*B0@A0, which rewind undoes given the step-0 adapter.
RESIDUAL_INITS = ("pissa", "olora", "corda", "lora_ga")
# The base is left as it is: s*B@A is the whole update.
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica")
# Any other init ("loftq" quantizes the base; inits rewind does not know may rewrite it) is refused, as is KaSA
# (kasa_config), which truncates the base's smallest singular components: no adapter file holds what they removed.
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


def residual_init(peft_config: dict[str, Any], where: Any) -> str | None:
    """The residual init a LoRA adapter was trained with (None: its base was left as it was).

    RewindError for an init that rewrote the base in a way rewind cannot undo; AdaLoRA and the other types take no
    string init (AdaLoRA's layer treats any as its default init), so only LORA is checked.
    """
    if str(peft_config.get("peft_type", "")).upper() != "LORA":
        return None
    fix = (
        "rewind cannot undo that from the adapter: save the merged finetune (peft's merge_and_unload) and pass "
        "that model dir as --adapter, which rewind reads as a full finetune of --base"
    )
    if peft_config.get("kasa_config"):
        raise RewindError(f"{where}: KaSA (kasa_config) truncated the base weights at init; {fix}")
    init = peft_config.get("init_lora_weights")
    if not isinstance(init, str) or init.lower() in PLAIN_INITS:
        return None
    if init.lower().startswith(RESIDUAL_INITS):
        return init
    if init.lower() == "loftq":
        raise RewindError(
            f"{where}: init_lora_weights 'loftq' replaced the base weights by their quantization at init; {fix}"
        )
    raise RewindError(
        f"{where}: init_lora_weights {init!r} is not an init rewind knows, and it may have rewritten "
        f"the base weights; {fix}"
    )
