"""What an update kind provides: `Delta` (one tensor's update) and `Kind` (its peft format), and the readers' helpers.

Deltas never hold W0: it is passed in, so one update serves the resident model and streaming export alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import RewindError


class Delta:
    additive: ClassVar[bool] = True  # W1 - W0 is linear in the trained parameter: the linear path is natural
    relative: ClassVar[bool] = True  # the balanced schedule divides strength() by ||W0||_F (not for a generator)

    def merged(self, w0: torch.Tensor) -> torch.Tensor:
        """W1 in fp32, by peft's formula."""
        raise NotImplementedError

    def strength(self, w0: torch.Tensor) -> float:
        """Update size used by the `balanced` layer schedule: ||W1 - W0||_F."""
        return float(torch.linalg.vector_norm(self.merged(w0) - w0.float()))

    def shape(self, want: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the tensor this update fits, from its own tensors (`want`: the base tensor's, for kinds that
        fit any); ValueError saying how, when its tensors do not fit each other."""
        raise NotImplementedError


# A module's tensors -> its updates: (module name, {leaf: tensor}, adapter_config, base shapes, tensors outside
# any module) -> {base tensor name: Delta}. Leaves are what follows the module name ("lora_A.weight").
Reader = Callable[[str, dict, dict, Mapping[str, torch.Size], dict], dict[str, Delta]]
# The scaled-adapter export: (the module's stored {leaf: tensor}, the Delta of its weight, alpha, a function giving
# W0, the path options) -> the leaves that change, so that peft loads the adapter as W(alpha) of the natural path.
Scaler = Callable[..., dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Field:
    """An adapter_config.json field a reader uses; a missing optional one takes peft's default in the reader."""

    key: str
    ok: Callable[[Any], bool]
    what: str  # what it must be, for the error
    required: bool = False


@dataclass(frozen=True)
class Kind:
    """One peft adapter format, as rewind reads and writes it."""

    peft_type: str | None  # None: a full checkpoint, not an adapter
    read: Reader | None = None
    prefixes: tuple[str, ...] = ()  # how its leaves start: where a tensor key's module name ends
    fields: tuple[Field, ...] = ()
    scale: Scaler | None = None  # None: --format adapter is refused, saying `no_adapter`
    no_adapter: str = ""
    # (base tensor name, Delta, alpha, path options): RewindError where peft would load the scaled adapter as
    # another point than this one
    check_scale: Callable[..., None] | None = None
    paths: tuple[type, ...] = ()  # path kinds of its own (paths.base.PathKind subclasses), besides those in paths/
    # (empty meta-device model, peft config) -> the trainable parameters peft would give it, for a kind whose peft
    # layers allocate real memory as they are built (budget.py counts the others by building them)
    count: Callable[..., int] | None = None


def positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pattern_map(v) -> bool:
    return v is None or (isinstance(v, dict) and all(isinstance(k, str) and number(x) for k, x in v.items()))


# peft's per-module overrides of a rank and an alpha (LoRA and the LyCORIS kinds), keyed by module-name regexes
PATTERNS = (
    Field("rank_pattern", pattern_map, "a mapping of module patterns to numbers"),
    Field("alpha_pattern", pattern_map, "a mapping of module patterns to numbers"),
)


def rank_fields(alpha_key: str) -> tuple[Field, ...]:
    """A rank `r` and an alpha named `alpha_key`, both required, and their PATTERNS (LoRA and the LyCORIS kinds)."""
    return (
        Field("r", positive_int, "a positive integer", required=True),
        Field(alpha_key, number, "a number", required=True),
        *PATTERNS,
    )


def check_config(config: dict, fields: tuple[Field, ...], where) -> None:
    """Each field present is what it must be, and each required one is there: one RewindError line otherwise."""
    peft_type = str(config.get("peft_type", "")).upper()
    for f in fields:
        if f.key not in config:
            if f.required:
                raise RewindError(f"{where}: `{f.key}` is missing; a {peft_type} adapter config has it")
            continue
        if not f.ok(config[f.key]):
            raise RewindError(f"{where}: `{f.key}` is {config[f.key]!r}; it must be {f.what}")
        if f in PATTERNS:
            _check_patterns(config, f.key, where)


def _check_patterns(config: dict, key: str, where) -> None:
    for regex, value in (config.get(key) or {}).items():
        try:
            re.compile(regex)
        except re.error as exc:
            raise RewindError(f"{where}: {key} pattern {regex!r} is not a valid regex ({exc})") from None
        if key == "rank_pattern" and not positive_int(value):
            raise RewindError(f"{where}: rank_pattern[{regex!r}] is {value!r}; it must be a positive integer")


def pattern(config: dict, key: str, module: str, default):
    """peft's rank_pattern/alpha_pattern lookup: a pattern matches a suffix of the module name."""
    for regex, value in (config.get(key) or {}).items():
        if re.match(rf"(.*\.)?({regex})$", module):
            return value
    return default


def only(parts: dict, names: set[str], module: str) -> None:
    """RewindError for leaves a reader does not know (what it cannot read must not be dropped silently)."""
    unknown = set(parts) - names
    if unknown:
        raise RewindError(
            f"adapter module {module}: unsupported tensors {sorted(unknown)} (embedding or conv "
            f"adapters, trained biases and multi-adapter files are not read)"
        )


def product_shape(B: torch.Tensor, A: torch.Tensor, names: str = "B, A") -> tuple[int, int]:
    """[out, in] of B @ A; ValueError when B [out, r] and A [r, in] do not fit each other."""
    if B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"{names} are {tuple(B.shape)}, {tuple(A.shape)} (expected [out, r] and [r, in])")
    return B.shape[0], A.shape[1]
