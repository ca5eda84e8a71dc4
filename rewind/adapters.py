"""Adapter dir (peft) or full finetuned checkpoint -> Update: one Delta per base tensor it changes.

Only safetensors and JSON are read. Every tensor name is a base-model parameter name ("model.layers.3.mlp.down_proj
.weight"), checked against the base's shapes, so an adapter of another model fails here with one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from . import methods, tensorio
from .errors import RewindError
from .updates.base import Delta, check_config
from .updates.full import Replace
from .updates.lora import DoRA, LowRank

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # before every base parameter name in a peft adapter's keys
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class Update:
    method: methods.Method
    source: Path
    config: dict
    deltas: dict[str, Delta]  # base parameter name -> what the finetune did to it
    sha256: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def natural_path(self) -> str:
        return self.method.natural_path

    def layers(self) -> list[int]:
        return sorted({i for i in map(layer_of, self.deltas) if i is not None})


def layer_of(name: str) -> int | None:
    """Transformer layer index of a parameter name, None for embeddings, final norm, lm_head."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


class Base(Protocol):
    """What an adapter is read against: a base checkpoint on disk (checkpoint.BaseTensors) or a loaded model
    (engine.ModelTensors)."""

    shapes: Mapping[str, torch.Size]  # every base parameter's shape, by name
    config: Mapping | None  # the base's config.json; None: no architecture check

    def __call__(self, name: str) -> torch.Tensor:
        """The base tensor `name` (W0), read only for a full checkpoint: to skip what the finetune left unchanged."""


def read(adapter: str | Path, base: Base, init_adapter: str | Path | None = None) -> Update:
    """Read an adapter dir (or a full checkpoint dir) against `base`: every tensor is checked against its shapes.

    `init_adapter` is the step-0 adapter of a residual-init LoRA (PiSSA/OLoRA/CorDA saved unconverted).
    `base.config`, when given, is checked against the architecture the adapter says it was trained on: same-shaped
    models of another family (a Qwen2 adapter on a Llama) fail here too.
    """
    path = Path(adapter)
    if not path.is_dir():
        raise RewindError(f"--adapter {adapter}: no such directory")
    if init_adapter is not None and not Path(init_adapter).is_dir():
        raise RewindError(f"--init-adapter {init_adapter}: no such directory (give the step-0 adapter dir)")
    if (path / ADAPTER_CONFIG).is_file():
        return _read_peft(path, base.shapes, init_adapter, base.config)
    if (path / "config.json").is_file():
        return _read_full(path, base)
    raise RewindError(f"--adapter {adapter}: neither a peft adapter ({ADAPTER_CONFIG}) nor a model dir (config.json)")


def load_json(path: Path) -> dict:
    """A JSON object from a file, or a one-line RewindError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RewindError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RewindError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _family(name) -> str:
    """'Qwen2ForCausalLM' / 'qwen2' / 'GPT2LMHeadModel' -> 'qwen2' / 'qwen2' / 'gpt2' (comparable spellings)."""
    name = re.sub(r"(For[A-Z]\w*|LMHeadModel|Model)$", "", str(name))
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _cached_model_type(repo_id: str) -> str | None:
    """model_type of a hub model whose config.json is in the local HF cache (never a download, never a path)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
        if isinstance(found, str):
            return json.loads(Path(found).read_text()).get("model_type")
    except Exception:  # broad: an unreadable cache entry only means "no evidence"
        pass
    return None


def check_architecture(config: Mapping, base_config: Mapping | None, source: Path) -> None:
    """Refuse an adapter whose own metadata names another model family than the base's.

    Evidence, when present: peft's `auto_mapping.base_model_class` (saved without a task type), a full checkpoint's
    `architectures`/`model_type`, and for a hub `base_model_name_or_path` the model_type of its config in the HF
    cache. No value from the adapter is used as a file path.
    """
    if not base_config:
        return
    base_families = {_family(a) for a in base_config.get("architectures") or [] if isinstance(a, str)}
    if isinstance(base_config.get("model_type"), str):
        base_families.add(_family(base_config["model_type"]))
    if not base_families:
        return
    claims = []
    mapping = config.get("auto_mapping")
    if isinstance(mapping, dict) and isinstance(mapping.get("base_model_class"), str):
        claims.append((mapping["base_model_class"], "auto_mapping.base_model_class"))
    for arch in config.get("architectures") or []:
        if isinstance(arch, str):
            claims.append((arch, "architectures"))
    if isinstance(config.get("model_type"), str) and "peft_type" not in config:
        claims.append((config["model_type"], "model_type"))
    hub = config.get("base_model_name_or_path")
    if isinstance(hub, str) and _HUB_ID.fullmatch(hub) and ".." not in hub:
        cached = _cached_model_type(hub)
        if cached:
            claims.append((cached, f"the cached config of {hub}"))
    for claim, where in claims:
        if _family(claim) and _family(claim) not in base_families:
            base_name = base_config.get("model_type") or next(iter(base_families))
            raise RewindError(
                f"{source} was trained on a {claim} model ({where}) but --base is a {base_name} model: "
                f"pass the base it was trained on"
            )


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        other = list(path.parent.glob("*.bin")) + list(path.parent.glob("*.pt"))
        hint = " (rewind reads no pickle files: re-save with safe_serialization=True)" if other else ""
        raise RewindError(f"{path}: missing{hint}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise RewindError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from exc
    for name, t in tensors.items():
        if not tensorio.all_finite(t):
            raise RewindError(f"{path}: tensor {name} has NaN/Inf values; the adapter is broken")
    return tensors


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_peft(path: Path, shapes: Mapping[str, torch.Size], init_adapter, base_config=None) -> Update:
    config = load_json(path / ADAPTER_CONFIG)
    sidecar = load_json(path / methods.SIDECAR) if (path / methods.SIDECAR).is_file() else None
    method = methods.identify(config, sidecar)
    check_config(config, method.kind.fields, path / ADAPTER_CONFIG)
    residual = methods.residual_init(config, path / ADAPTER_CONFIG)
    check_architecture(config, base_config, path)
    weights_file = path / ADAPTER_WEIGHTS
    tensors = load_safetensors(weights_file)
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise RewindError(f"{weights_file}: tensor {key} is {t.dtype}; adapter weights are floating point")
    whole, by_module, shared = split_keys(tensors, shapes, method)
    deltas: dict[str, Delta] = {whole[key]: Replace(tensors[key]) for key in whole}
    for module, leaves in by_module.items():
        if f"{module}.weight" not in shapes:
            raise RewindError(
                f"adapter module {module} is not in the base model; was the adapter trained on "
                f"{config.get('base_model_name_or_path') or 'another model'}?"
            )
        parts = {leaf: tensors[key] for leaf, key in leaves.items()}
        try:
            deltas.update(method.kind.read(module, parts, config, shapes, shared))
        except RewindError:
            raise
        except (
            KeyError,
            TypeError,
            ValueError,
            ZeroDivisionError,
            AttributeError,
            IndexError,
            re.error,
            RuntimeError,
        ) as exc:
            raise RewindError(
                f"{path / ADAPTER_CONFIG}: cannot read module {module} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); the adapter is malformed"
            ) from exc
    if residual:
        _rebase_residual(deltas, residual, config, init_adapter, path)
    for name, delta in deltas.items():
        _check_shape(name, delta, shapes, config)
    if not deltas:
        raise RewindError(f"{weights_file}: no adapter tensors found")
    return Update(method, path, config, deltas, sha256(weights_file))


def split_keys(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size], method: methods.Method):
    """A peft adapter's tensor keys by what they are: ({key: base tensor name} of tensors stored whole (peft's
    modules_to_save), {module: {leaf: key}} of the method's adapter modules, {key: tensor} of the rest (VeRA's
    projections live at base_model.vera_A / vera_B))."""
    whole: dict[str, str] = {}
    by_module: dict[str, dict[str, str]] = {}
    shared: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            shared[key] = t
            continue
        name = key[len(PEFT_PREFIX) :]
        if name in shapes:  # modules_to_save: peft stores the whole trained tensor under its base name
            whole[key] = name
            continue
        module, leaf = _split_key(name, method)
        by_module.setdefault(module, {})[leaf] = key
    return whole, by_module, shared


def _split_key(key: str, method: methods.Method) -> tuple[str, str]:
    """'model.layers.0.self_attn.q_proj.lora_A.weight' -> ('model.layers.0.self_attn.q_proj', 'lora_A.weight')."""
    parts = key.split(".")
    prefixes = method.kind.prefixes
    for i, part in enumerate(parts):
        if part.startswith(prefixes):
            return ".".join(parts[:i]), ".".join(parts[i:])
    raise RewindError(
        f"adapter tensor {key} is neither a {method.name} adapter parameter ({', '.join(prefixes)}"
        f"...) nor a base-model tensor"
    )


def _rebase_residual(deltas: dict[str, Delta], init: str, config: dict, init_adapter, path: Path) -> None:
    """PiSSA-style adapters trained on a residual base W0 - s*B0@A0: the true update is s*(B@A - B0@A0).

    DoRA on such a base normalises W0 + s*(B@A - B0@A0) too, so it keeps its magnitude with the same factors.
    """
    if init_adapter is None:
        raise RewindError(
            f"{path} was trained on a residual base ({init} init): pass --init-adapter DIR "
            f"with its step-0 adapter, or convert it with peft's path_initial_model_for_weight_conversion"
        )
    init_config = load_json(Path(init_adapter) / ADAPTER_CONFIG)
    init_weights = load_safetensors(Path(init_adapter) / ADAPTER_WEIGHTS)
    for name, delta in deltas.items():
        if not isinstance(delta, (LowRank, DoRA)):  # modules_to_save: stored whole, no residual
            continue
        module = name[: -len(".weight")]
        try:
            B0 = init_weights[f"{PEFT_PREFIX}{module}.lora_B.weight"]
            A0 = init_weights[f"{PEFT_PREFIX}{module}.lora_A.weight"]
        except KeyError:
            raise RewindError(f"--init-adapter {init_adapter}: no {module} (not this adapter's step 0)") from None
        if init_config.get("r") != config.get("r") or B0.shape != delta.B.shape:
            raise RewindError(f"--init-adapter {init_adapter}: its shapes differ from the adapter's")
        deltas[name] = dataclasses.replace(delta, B=torch.cat([delta.B, B0], 1), A=torch.cat([delta.A, -A0], 0))


def _check_shape(name: str, delta: Delta, shapes: Mapping[str, torch.Size], config: dict) -> None:
    if name not in shapes:
        raise RewindError(f"adapter tensor {name} is not in the base model")
    want = tuple(shapes[name])
    try:
        got = tuple(delta.shape(want))
    except ValueError as exc:
        raise RewindError(f"adapter tensors of {name} do not fit each other: {exc}; the adapter is broken") from None
    if got != want:
        base = config.get("base_model_name_or_path") or config.get("_name_or_path") or "another model"
        raise RewindError(
            f"adapter does not fit this base: {name} is {want} in the base but {got} in the adapter "
            f"(trained on {base}?)"
        )


def _read_full(path: Path, base: Base) -> Update:
    config = load_json(path / "config.json")
    check_architecture(config, base.config, path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise RewindError(f"{path}: a full checkpoint needs *.safetensors weights")
    shapes = base.shapes
    deltas: dict[str, Delta] = {}
    digest = hashlib.sha256()
    for file in files:
        digest.update(sha256(file).encode())
        for name, w1 in load_safetensors(file).items():
            if name not in shapes:
                raise RewindError(f"full checkpoint tensor {name} is not in the base model (another architecture?)")
            w0 = base(name)
            if tuple(w1.shape) != tuple(shapes[name]):
                raise RewindError(
                    f"checkpoint does not fit this base: {name} is {tuple(shapes[name])} in the base "
                    f"but {tuple(w1.shape)} in {path}"
                )
            if not torch.equal(w1.to(w0.device, w0.dtype), w0):  # compared where the base lives (a GPU, often)
                deltas[name] = Replace(w1)
    if not deltas:
        raise RewindError(f"{path}: identical to the base; nothing to rewind")
    return Update(methods.METHODS["full"], path, config, deltas, digest.hexdigest())
