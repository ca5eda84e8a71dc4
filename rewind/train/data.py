"""Training rows in TRL's conversational prompt/completion form, from reasoning-gym (offline) or a hub/local table.

Every row has `prompt` (chat messages) and `completion` (the reference assistant turn: the SFT target, and what
KeepLoRA's init gradient is taken on). GRPO rows also carry what their reward checks: `rg_source`/`rg_index` (a
reasoning-gym item, scored by its own generator) or `solution` (a math answer for math-verify).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RewindError
from .schema import DataSpec

# `generators: [math-offline]` trains on the math-offline eval suite's generators, with its settings.
SUITE = "math-offline"
_TABLE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def build(spec: DataSpec):
    """The rows for `spec` as a datasets.Dataset."""
    from datasets import Dataset

    if spec.source == "unavailable":
        raise RewindError(spec.reason or "this recipe has no training data here")
    rows = _reasoning_gym_rows(spec) if spec.source == "reasoning_gym" else _table_rows(spec)
    if not rows:
        raise RewindError(f"data: no training rows ({spec.source}); check data.filters / data.limit")
    return Dataset.from_list(rows)


def check(spec: DataSpec) -> None:
    """The checks that need no data: run when a recipe loads."""
    if spec.source == "hub" and not spec.path:
        raise RewindError("data.path: set a hub dataset id or a local data file")
    for text in spec.filters:
        _parse_filter(text)
    if spec.source == "reasoning_gym":
        generator_settings(spec)


def generator_settings(spec: DataSpec) -> dict[str, dict]:
    """{generator: its reasoning-gym arguments}, with the seed range checked against the eval suites'."""
    from ..evaluate.suites import MATH_GENERATORS, TRAIN_SEED_LIMIT

    if not spec.generators:
        raise RewindError(f"data.generators: name reasoning-gym generators (e.g. [basic_arithmetic]) or {SUITE}")
    last = spec.seed + spec.size - 1
    if spec.size < 1 or spec.seed < 1 or last >= TRAIN_SEED_LIMIT:
        raise RewindError(
            f"data.seed={spec.seed}, data.size={spec.size}: items use seeds {spec.seed}..{last}, but "
            f"training seeds must lie in [1, {TRAIN_SEED_LIMIT - 1}] (the eval suites' items come "
            f"from above)"
        )
    settings: dict[str, dict] = {}
    for name in spec.generators:
        if name == SUITE:
            settings.update({n: dict(args) for n, args in MATH_GENERATORS.items()})
        else:
            settings.setdefault(name, {})
    for name, args in spec.generator_args.items():
        if name not in settings:
            raise RewindError(f"data.generator_args: {name} is not among data.generators")
        settings[name] = {**settings[name], **args}
    return settings


def reasoning_gym_datasets(spec: DataSpec) -> dict:
    """{generator: reasoning_gym dataset}, deterministic in (name, args, size, seed): the GRPO reward rebuilds it."""
    import reasoning_gym

    out = {}
    for name, args in generator_settings(spec).items():
        try:
            out[name] = reasoning_gym.create_dataset(name, size=spec.size, seed=spec.seed, **args)
        except Exception as exc:  # broad: reasoning-gym raises many types for bad names and arguments
            raise RewindError(f"data.generators: reasoning-gym cannot make {name!r} ({exc})") from exc
    return out


def _messages(spec: DataSpec, question: str) -> list[dict]:
    system = [{"role": "system", "content": spec.system}] if spec.system else []
    return [*system, {"role": "user", "content": question}]


def _reasoning_gym_rows(spec: DataSpec) -> list[dict]:
    rows = []
    for name, dataset in reasoning_gym_datasets(spec).items():
        for i, item in enumerate(dataset):
            answer = spec.answer_format.format(answer=item["answer"])
            rows.append(
                {
                    "prompt": _messages(spec, item["question"]),
                    "completion": [{"role": "assistant", "content": answer}],
                    "rg_source": name,
                    "rg_index": i,
                }
            )
    return rows


def _table_rows(spec: DataSpec) -> list[dict]:
    table = load_table(spec)
    conditions = [_parse_filter(f) for f in spec.filters]
    rows = []
    for row in table:
        if not all((str(field_value(row, f)) == v) == equal for f, equal, v in conditions):
            continue
        truth = str(field_value(row, spec.ground_truth))
        rows.append(
            {
                "prompt": _messages(spec, str(field_value(row, spec.question))),
                "completion": [{"role": "assistant", "content": str(field_value(row, spec.answer))}],
                # math-verify reads a bare gold answer only inside math delimiters
                "solution": truth if "$" in truth or "boxed" in truth else f"${truth}$",
            }
        )
        if spec.limit and len(rows) >= spec.limit:
            break
    return rows


def load_table(spec: DataSpec):
    """The raw table: a local .parquet/.json/.jsonl/.csv file, or a hub dataset (needs the hub or its cache)."""
    from datasets import load_dataset

    local = Path(spec.path).expanduser()
    try:
        if local.is_file():
            if local.suffix not in _TABLE_BUILDERS:
                raise RewindError(f"data.path {local}: read .parquet, .json, .jsonl or .csv files")
            return load_dataset(_TABLE_BUILDERS[local.suffix], data_files=str(local), split="train")
        return load_dataset(spec.path, spec.name, split=spec.split, data_files=spec.data_files)
    except RewindError:
        raise
    except Exception as exc:  # broad: hub, network and format errors come in many types
        raise RewindError(
            f"data.path {spec.path}: cannot load ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); without the hub, download it once and "
            f"set data.path to the local file"
        ) from exc


def field_value(row: dict, path: str):
    """row["a"]["b"] for "a.b"; a missing field is a one-line error naming the row's keys."""
    value = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            keys = ", ".join(value) if isinstance(value, dict) else type(value).__name__
            raise RewindError(f"data: field {path!r} not found (at {part!r}; there: {keys})")
        value = value[part]
    return value


def _parse_filter(text: str) -> tuple[str, bool, str]:
    for op, equal in (("!=", False), ("==", True)):
        field_path, sep, value = text.partition(op)
        if sep:
            return field_path.strip(), equal, value.strip()
    raise RewindError(f"data.filters: {text!r} is not 'field == value' or 'field != value'")
