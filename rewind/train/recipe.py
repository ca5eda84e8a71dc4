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
import dataclasses
import enum
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import methods, models
from ..errors import RewindError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
PRESETS_DIR = RECIPES_DIR / "presets"
KINDS = ("sft", "grpo")
_PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
DOMAINS = ("math", "medical")
DATA_SOURCES = ("reasoning_gym", "hub", "unavailable")
REWARDS = ("reasoning_gym", "math")
# Trainer arguments rewind sets itself, and the recipe key that controls each.
RESERVED_TRAINER_KEYS = {"output_dir": "the out_dir argument", "seed": "seed", "data_seed": "seed",
                         "save_steps": "save_steps", "save_strategy": "save_steps", "resume_from_checkpoint": "resume",
                         "use_cpu": "device", "report_to": "(rewind writes train_log.jsonl)",
                         "reward_weights": "reward.format_weight"}


@dataclass
class DataSpec:
    """Where the training examples come from. Which fields apply depends on `source`."""

    source: str = ""  # reasoning_gym | hub | unavailable
    reason: str = ""  # unavailable: why, and what to do instead
    # reasoning_gym: procedurally generated, offline. Item i of a generator uses seed + i.
    generators: list[str] = field(default_factory=list)
    generator_args: dict = field(default_factory=dict)  # {generator: {kwarg: value}}
    size: int = 1000  # items per generator
    seed: int = 1
    answer_format: str = "<answer>{answer}</answer>"  # the SFT target built from a generator's answer
    # hub: a hub dataset id, or a local file/dir that datasets.load_dataset reads
    path: str = ""
    name: str | None = None
    split: str = "train"
    data_files: Any = None
    filters: list[str] = field(default_factory=list)  # "field == value" / "field != value", dotted fields
    question: str = "question"  # dotted field paths into each row
    answer: str = "answer"  # the SFT target (a worked solution)
    ground_truth: str = "answer"  # what the GRPO reward checks against
    limit: int = 0  # first N rows after filtering; 0 = all
    system: str = ""  # system prompt; "" = none


@dataclass
class RewardSpec:
    type: str = ""  # reasoning_gym: the generator's own scorer; math: math-verify (TRL's accuracy_reward)
    format_weight: float = 0.0  # weight of a reward for wrapping the answer in <answer></answer> tags


@dataclass
class Recipe:
    kind: str = ""  # sft | grpo
    method: str = ""  # a name from rewind.methods.METHODS
    base: str = models.DEFAULT_BASE  # alias, hub id or local dir
    preset: str = ""  # recipes/presets/<preset>.yaml; "" = the one named after the base alias, if any
    domain: str = "math"
    seed: int = 0
    dtype: str = "bf16"
    device: str = "auto"
    save_steps: int = 50  # checkpoint-<step> every N optimizer steps
    resume: bool = False  # continue from the latest checkpoint-* in out_dir
    peft: dict = field(default_factory=dict)  # over the method's defaults in rewind.methods
    init: dict = field(default_factory=dict)  # the method's own init options (see rewind.train.inits)
    trainer: dict = field(default_factory=dict)  # TRL SFTConfig / GRPOConfig fields
    data: DataSpec = field(default_factory=DataSpec)
    reward: RewardSpec = field(default_factory=RewardSpec)

    @property
    def method_info(self) -> methods.Method:
        return methods.get(self.method)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def recipe_path(name: str | Path) -> Path:
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
    return sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for kind in KINDS
                  for p in (RECIPES_DIR / kind).glob("*.yaml"))


def load(recipe: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Resolve a recipe (a path, a shipped name or a dict) with `key=value` overrides into a validated Recipe."""
    raw = recipe if isinstance(recipe, dict) else read_yaml(recipe_path(recipe))
    top = merge(raw, parse_overrides(overrides))
    preset_name = top.get("preset") or _alias_preset(top.get("base", models.DEFAULT_BASE))
    under = _flatten_preset(load_preset(preset_name), top, preset_name) if preset_name else {}
    recipe_obj = _build(Recipe, {**merge(under, top), "preset": preset_name}, "")
    _validate(recipe_obj)
    return recipe_obj


def load_preset(name: str, _chain: tuple[str, ...] = ()) -> dict:
    """A preset with what it `extends` merged under it."""
    if not isinstance(name, str) or not _PRESET_NAME.fullmatch(name):
        # `preset:` and `extends:` come from recipe files: a name, never a path (no ../ out of recipes/presets).
        raise RewindError(f"preset {name!r}: give the name of a file in {PRESETS_DIR} (e.g. smollm2), not a path")
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
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


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RewindError(f"{path}: unreadable YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise RewindError(f"{path}: a recipe is a YAML mapping, got {type(data).__name__}")
    return data


def _alias_preset(base: str) -> str:
    return str(base) if str(base) in models.ALIASES and (PRESETS_DIR / f"{base}.yaml").is_file() else ""


def _flatten_preset(preset: dict, top: dict, name: str) -> dict:
    """The preset's common part, then its section for the recipe's domain, then the one for its kind."""
    sections = set(KINDS) | set(DOMAINS)
    common = {k: v for k, v in preset.items() if k not in sections and k != "architecture"}
    _check_keys(common, Recipe, f"preset {name}: ")
    out = common
    for section in (top.get("domain", common.get("domain", "math")), top.get("kind", "")):
        part = preset.get(section) or {}
        _check_keys(part, Recipe, f"preset {name}, section {section}: ")
        out = merge(out, part)
    return out


def _check_keys(raw: dict, cls, where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise RewindError(f"{where}unknown key {key!r}; known: {', '.join(sorted(names))}")


def _build(cls, raw: dict, prefix: str):
    """A dataclass from a dict, every value checked against the field's type."""
    if not isinstance(raw, dict):
        raise RewindError(f"{prefix.rstrip('.')}: expected a section (mapping), got {raw!r}")
    _check_keys(raw, cls, prefix)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, raw[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = coerce(raw[f.name], tp, prefix + f.name)
    return cls(**kwargs)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp`, or a RewindError naming `key`. Types it cannot check pass through (the consumer checks)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise RewindError(f"{key}: must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except RewindError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise RewindError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise RewindError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RewindError(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RewindError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RewindError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # PyYAML reads "1e-4" (no dot) as a string: accept any number-like value.
        if isinstance(value, bool):
            raise RewindError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RewindError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise RewindError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value).value if isinstance(value, str) else tp(value)
        except ValueError:
            raise RewindError(f"{key}: {value!r} is not one of {', '.join(str(m.value) for m in tp)}") from None
    return value


def check_fields(values: dict, cls, section: str, reserved: dict[str, str] | None = None) -> dict:
    """Check a pass-through section (`trainer`, `peft`) against a dataclass's fields and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    out = {}
    for key, value in values.items():
        if reserved and key in reserved:
            raise RewindError(f"{section}.{key}: rewind sets this itself; use {reserved[key]} instead")
        if key not in names:
            raise RewindError(f"{section}.{key}: not a field of {cls.__name__}")
        out[key] = coerce(value, hints.get(key, Any), f"{section}.{key}")
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
        raise RewindError(f"data.source: {r.data.source!r} is not one of {', '.join(DATA_SOURCES)} "
                          f"(no preset set it: pick one with preset=NAME or set data.*)")
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
    r.trainer = check_fields(r.trainer, sft.CONFIG if r.kind == "sft" else grpo.CONFIG, "trainer",
                             RESERVED_TRAINER_KEYS)
    if r.kind == "grpo" and method.peft_type == "ADALORA" and r.trainer.get("beta", 0.0):
        raise RewindError("trainer.beta: GRPO with adalora needs beta=0 (TRL keeps the KL reference as a second "
                          "adapter, and peft's AdaLoRA allows only one)")
