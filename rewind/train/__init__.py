"""Training as a library: YAML recipes (recipes/), TRL's SFT and GRPO trainers, MiLoRA/KeepLoRA inits, budgets.

    from rewind.train import train, load_recipe, budget_table
    out = train("sft/lora", ["trainer.max_steps=50", "peft.r=16"], "runs/lora")   # -> out dir with the adapter
    load_recipe("grpo/oft", ["base=qwen"]).to_yaml()                              # the resolved recipe, no training
    budget_table("qwen")                                                          # exact trainable counts, no weights

Imports stay light: TRL and peft load when a function needs them.
"""

from .budget import BudgetRow, budget_table, format_table, recipe_variants
from .recipe import available, recipe_path
from .recipe import load as load_recipe
from .schema import Recipe


def train(recipe, overrides=(), out_dir="", callbacks=()):
    """Train a recipe into out_dir (see rewind.train.run.train)."""
    from .run import train as _train

    return _train(recipe, overrides, out_dir, callbacks)


def checkpoint_dirs(out_dir):
    """A run's checkpoint-<step> dirs, by step: the adapters of its training path."""
    from .checkpoints import checkpoint_dirs as _checkpoint_dirs

    return _checkpoint_dirs(out_dir)


__all__ = [
    "BudgetRow",
    "Recipe",
    "available",
    "budget_table",
    "checkpoint_dirs",
    "format_table",
    "load_recipe",
    "recipe_path",
    "recipe_variants",
    "train",
]
