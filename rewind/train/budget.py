"""Trainable-parameter budgets, exact, from a base's config alone: peft is applied to an empty (meta-device) model.

The paper matches budgets across methods: OFT b32 ~ LoRA/PiSSA/MiLoRA/KeepLoRA/DoRA r8 (~20M on Qwen2.5-7B), and
OFT b64 ~ LoRA r16 (~40M). The shipped SFT recipes sit at the first level and the GRPO recipes at the second, so
`budget_table("qwen")` (one row per shipped recipe) shows both without downloading a weight.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from .. import methods, models
from ..errors import RewindError


@dataclass(frozen=True)
class BudgetRow:
    label: str  # the recipe ("sft/lora") or a caller's name for the variant
    method: str
    config: str  # the peft options that set the budget
    trainable: int
    total: int  # all parameters, adapter included


def recipe_variants() -> list[tuple[str, str, dict]]:
    """(recipe name, method, its peft options) for every shipped recipe."""
    from .recipe import available, read_yaml, recipe_path

    out = []
    for name in available():
        raw = read_yaml(recipe_path(name))
        out.append((name, raw.get("method", ""), raw.get("peft") or {}))
    return out


def budget_table(base, variants=None) -> list[BudgetRow]:
    """Exact trainable counts for `base` (an alias, dir, hub id, config dict or transformers config), one row per
    (label, method, peft options) in `variants` (default: the shipped recipes). Aliases with a preset use its
    `architecture`, so no hub access is needed."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        empty = AutoModelForCausalLM.from_config(model_config(base))
    return [_row(empty, label, name, options) for label, name, options in (variants or recipe_variants())]


def model_config(base):
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(base, PretrainedConfig):
        return base
    if isinstance(base, dict):
        return _from_dict(base)
    from .recipe import preset_architecture

    architecture = preset_architecture(str(base))
    if architecture:
        return _from_dict(architecture)
    where = models.resolve(base)
    try:
        return AutoConfig.from_pretrained(where)
    except OSError as exc:
        raise RewindError(f"--base {where}: no config.json to read ({str(exc).splitlines()[0]})") from exc


def _from_dict(fields: dict):
    from transformers import AutoConfig

    fields = dict(fields)
    try:
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    except (KeyError, ValueError) as exc:
        raise RewindError(f"architecture {fields}: not a transformers config ({exc})") from exc


def _row(empty, label: str, name: str, options: dict) -> BudgetRow:
    from peft import get_peft_model

    method = methods.get(name)
    model = copy.deepcopy(empty)  # meta tensors: the copy costs no memory
    total = sum(p.numel() for p in model.parameters())
    if method.config_class is None:
        return BudgetRow(label, name, "every weight", total, total)
    kwargs = {**options}
    if method.peft_type == "LORA":
        kwargs["init_lora_weights"] = True  # same shapes; SVD/gradient inits cannot run on empty weights
    if method.peft_type == "ADALORA":
        kwargs.setdefault("total_step", 1000)  # required by peft, irrelevant to the count
    if method.kind.count is not None:
        trainable = method.kind.count(model, method.peft_config(**kwargs))
        return BudgetRow(label, name, _summary({**method.defaults, **options}), trainable, total + trainable)
    model = get_peft_model(model, method.peft_config(**kwargs))
    for param_name, param in model.named_parameters():
        if ".ranknum." in param_name:
            param.requires_grad_(False)  # peft re-creates AdaLoRA's rank counter as trainable on meta; it is not
    if name == "keeplora":
        from .inits import freeze

        freeze(model, name)  # KeepLoRA trains lora_B only
    trainable, everything = model.get_nb_trainable_parameters()
    return BudgetRow(label, name, _summary({**method.defaults, **options}), trainable, everything)


def _summary(options: dict) -> str:
    shown = {k: v for k, v in options.items() if k not in ("lora_dropout", "feedforward_modules")}
    return " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in shown.items())


def format_table(rows: list[BudgetRow]) -> str:
    """The table as aligned text (what `rewind recipes` prints)."""
    width = max([len(row.label) for row in rows] + [6])
    lines = [f"{'recipe':<{width}} {'method':<9} {'trainable':>13} {'% of all':>9}  config"]
    for row in rows:
        share = 100 * row.trainable / row.total if row.total else 0.0
        lines.append(f"{row.label:<{width}} {row.method:<9} {row.trainable:>13,} {share:>8.3f}%  {row.config}")
    return "\n".join(lines)
