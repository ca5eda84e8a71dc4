"""Training recipes: YAML data, per-model presets, `key=value` overrides, validated before anything loads.

A recipe resolves in four layers, later ones winning:

    built-in defaults  <  preset  <  recipe file  <  overrides ("trainer.learning_rate=1e-4", "peft.r=16")

The preset is `preset:` when set, else the one named after the base alias (`base=qwen` selects
recipes/presets/qwen.yaml; the default base, smollm2, selects smollm2.yaml). A preset may `extends:` another, and
may hold sections named after a kind (`sft:`, `grpo:`) or a domain (`math:`, `medical:`): only the ones matching the
recipe are merged, domain first, so a kind section wins. Its `architecture:` (config.json fields) serves budgets.
Override values are parsed as YAML ("true", "3", "1e-4", "[a, b]").
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .. import methods, models
from ..errors import RewindError
from .schema import Recipe, build, check_fields, check_keys

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# Package data, so that an installed rewind finds them; the checkout's top-level recipes/ is a link to it.
RECIPES_DIR = resources.files("rewind") / "recipes"
PRESETS_DIR = RECIPES_DIR / "presets"
KINDS = ("sft", "grpo")
_PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
DOMAINS = ("math", "medical")
DATA_SOURCES = ("reasoning_gym", "hub", "unavailable")
REWARDS = ("reasoning_gym", "math")
# Trainer arguments rewind sets itself, and the recipe key that controls each.
RESERVED_TRAINER_KEYS = {
    "output_dir": "the out_dir argument",
    "seed": "seed",
    "data_seed": "seed",
    "save_steps": "save_steps",
    "save_strategy": "save_steps",
    "resume_from_checkpoint": "resume",
    "use_cpu": "device",
    "report_to": "(rewind writes train_log.jsonl)",
    "reward_weights": "reward.format_weight",
}


def recipe_path(name: str | Path) -> Path | Traversable:
    """A recipe file: a path, or a name under recipes/ ("sft/lora", "grpo/oft.yaml")."""
    path = Path(name)
    if path.is_file():
        return path
    stem = str(name) if str(name).endswith(".yaml") else f"{name}.yaml"
    shipped = RECIPES_DIR / stem
    if shipped.is_file():
        return shipped
    raise RewindError(f"recipe {name}: no such file, and not a name under {RECIPES_DIR} (e.g. sft/lora)")


def available() -> list[str]:
    """The shipped recipes, as names for `recipe_path` ("sft/lora", ...)."""
    return sorted(f"{kind}/{_stem(p)}" for kind in KINDS for p in (RECIPES_DIR / kind).iterdir() if _stem(p))


def load(recipe: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Resolve a recipe (a path, a shipped name or a dict) with `key=value` overrides into a validated Recipe."""
    raw = recipe if isinstance(recipe, dict) else read_yaml(recipe_path(recipe))
    top = merge(raw, parse_overrides(overrides))
    preset_name = top.get("preset") or _alias_preset(top.get("base", models.DEFAULT_BASE))
    under = _flatten_preset(load_preset(preset_name), top, preset_name) if preset_name else {}
    recipe_obj = build(Recipe, {**merge(under, top), "preset": preset_name}, "")
    _validate(recipe_obj)
    return recipe_obj


def load_preset(name: str, _chain: tuple[str, ...] = ()) -> dict:
    """A preset with what it `extends` merged under it."""
    if not isinstance(name, str) or not _PRESET_NAME.fullmatch(name):
        # `preset:` and `extends:` come from recipe files: a name, never a path (no ../ out of recipes/presets).
        raise RewindError(f"preset {name!r}: give the name of a file in {PRESETS_DIR} (e.g. smollm2), not a path")
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(filter(None, map(_stem, PRESETS_DIR.iterdir()))))
        raise RewindError(f"preset {name}: no {path}; known presets: {known}")
    preset = read_yaml(path)
    parent = preset.pop("extends", None)
    if parent:
        if parent in (*_chain, name):
            raise RewindError(f"preset {name}: `extends` loops through {parent}")
        preset = merge(load_preset(str(parent), (*_chain, name)), preset)
    return preset


def preset_architecture(base: str) -> dict | None:
    """A preset's `architecture` (the base's config.json fields), for budgets without the hub."""
    name = _alias_preset(base)
    return load_preset(name).get("architecture") if name else None


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"}; values parsed as YAML."""
    out: dict = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RewindError(f"override {item!r}: expected key=value (e.g. trainer.learning_rate=1e-4)")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise RewindError(f"override {item!r}: the value is not valid YAML") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RewindError(f"override {item!r}: {part} is set to a value earlier, not a section")
        node[parts[-1]] = parsed
    return out


def merge(low: dict, high: dict) -> dict:
    """Deep merge: dicts merge key by key, anything else in `high` replaces."""
    out = copy.deepcopy(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Path | Traversable) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RewindError(f"{path}: unreadable YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise RewindError(f"{path}: a recipe is a YAML mapping, got {type(data).__name__}")
    return data


def _stem(entry: Traversable) -> str:
    """A YAML file's name without .yaml; "" for anything else."""
    return entry.name[: -len(".yaml")] if entry.is_file() and entry.name.endswith(".yaml") else ""


def _alias_preset(base: str) -> str:
    return str(base) if str(base) in models.ALIASES and (PRESETS_DIR / f"{base}.yaml").is_file() else ""


def _flatten_preset(preset: dict, top: dict, name: str) -> dict:
    """The preset's common part, then its section for the recipe's domain, then the one for its kind."""
    sections = set(KINDS) | set(DOMAINS)
    common = {k: v for k, v in preset.items() if k not in sections and k != "architecture"}
    check_keys(common, Recipe, f"preset {name}: ")
    out = common
    for section in (top.get("domain", common.get("domain", "math")), top.get("kind", "")):
        part = preset.get(section) or {}
        check_keys(part, Recipe, f"preset {name}, section {section}: ")
        out = merge(out, part)
    return out


def _validate(r: Recipe) -> None:
    if r.kind not in KINDS:
        raise RewindError(f"kind: {r.kind!r} is not one of {', '.join(KINDS)}")
    method = methods.get(r.method)
    if r.domain not in DOMAINS:
        raise RewindError(f"domain: {r.domain!r} is not one of {', '.join(DOMAINS)}")
    if r.dtype not in models.DTYPES:
        raise RewindError(f"dtype: {r.dtype!r} is not one of {', '.join(models.DTYPES)}")
    if r.save_steps < 1:
        raise RewindError(f"save_steps: must be >= 1, got {r.save_steps}")
    if r.data.source not in DATA_SOURCES:
        raise RewindError(
            f"data.source: {r.data.source!r} is not one of {', '.join(DATA_SOURCES)} "
            f"(no preset set it: pick one with preset=NAME or set data.*)"
        )
    if r.kind == "grpo" and r.reward.type not in REWARDS:
        raise RewindError(f"reward.type: {r.reward.type!r} is not one of {', '.join(REWARDS)}")
    if r.kind == "grpo" and r.reward.type == "reasoning_gym" and r.data.source != "reasoning_gym":
        raise RewindError("reward.type=reasoning_gym needs data.source=reasoning_gym (hub data: reward.type=math)")
    if method.config_class is None and r.peft:
        raise RewindError(f"peft: method {method.name} trains every weight and takes no peft options")
    from . import data, grpo, inits, sft  # late: these import TRL/peft, which the checks above do not need

    data.check(r.data)
    if method.config_class is not None:
        import peft

        r.peft = check_fields(r.peft, getattr(peft, method.config_class), "peft")
    inits.options(method.name, r.init)
    r.trainer = check_fields(
        r.trainer, sft.CONFIG if r.kind == "sft" else grpo.CONFIG, "trainer", RESERVED_TRAINER_KEYS
    )
    if r.kind == "grpo" and method.peft_type == "ADALORA" and r.trainer.get("beta", 0.0):
        raise RewindError(
            "trainer.beta: GRPO with adalora needs beta=0 (TRL keeps the KL reference as a second "
            "adapter, and peft's AdaLoRA allows only one)"
        )
