"""Bundled offline suites: lm-eval task YAMLs (tasks/), compact data (data/), nltk's punkt_tab (nltk_data/).

The YAMLs are written by hand; data/, nltk_data/ and LICENSES.md are written by `python -m
rewind.evaluate.suites.build`. A suite is an lm-eval tag in tasks/ (`math-offline`, `med-offline`,
`code-offline`, `general-offline`); every task there has a `validation` and a `test` split with disjoint items.
"""

from pathlib import Path

ROOT = Path(__file__).parent
TASKS_DIR = ROOT / "tasks"
DATA_DIR = ROOT / "data"
NLTK_DIR = ROOT / "nltk_data"
SPLITS = ("validation", "test")

# reasoning-gym generators of math-offline, shared with training so that both sample the same distribution.
# Training must keep its item seeds (reasoning-gym seeds item i of a dataset with `seed + i`) below
# TRAIN_SEED_LIMIT; evaluation items start at EVAL_SEED and drop any prompt that an item seed below
# TRAIN_SEED_LIMIT produces, so no evaluation prompt is ever a training prompt.
TRAIN_SEED_LIMIT = 100_000
EVAL_SEED = 1_000_000
MATH_GENERATORS = {
    "basic_arithmetic": dict(
        min_terms=2,
        max_terms=3,
        min_digits=1,
        max_digits=2,
        operators=("+", "-", "*"),
        allow_parentheses=False,
        allow_negation=False,
    ),
    "chain_sum": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2),
    "leg_counting": dict(min_animals=2, max_animals=3, min_instances=1, max_instances=5),
}
