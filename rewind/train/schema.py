"""A recipe's typed sections (`Recipe`, `DataSpec`, `RewardSpec`) and the checked conversion of YAML data into them.

The modules that consume a section (data, grpo, inits) import it from here, not from recipe.py, which imports them
to validate a recipe: this module imports nothing of rewind.train, so the package has no import cycle.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from .. import methods, models
from ..errors import RewindError


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


def check_keys(raw: dict, cls, where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise RewindError(f"{where}unknown key {key!r}; known: {', '.join(sorted(names))}")


def build(cls, raw: dict, prefix: str):
    """A dataclass from a dict, every value checked against the field's type."""
    if not isinstance(raw, dict):
        raise RewindError(f"{prefix.rstrip('.')}: expected a section (mapping), got {raw!r}")
    check_keys(raw, cls, prefix)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = build(tp, raw[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = coerce(raw[f.name], tp, prefix + f.name)
    return cls(**kwargs)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp`, or a RewindError naming `key`. Types it cannot check pass through (the consumer checks)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, key)
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
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value).value if isinstance(value, str) else tp(value)
        except ValueError:
            raise RewindError(f"{key}: {value!r} is not one of {', '.join(str(m.value) for m in tp)}") from None
    return _coerce_scalar(value, tp, key)


def _coerce_union(value: Any, args: tuple, key: str) -> Any:
    """The first member type that accepts `value`; the first member's error if none does."""
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


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
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
    if tp is str and not isinstance(value, str):
        raise RewindError(f"{key}: expected a string, got {value!r}")
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
