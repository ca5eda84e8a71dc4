"""`rewind diagnose activations`: base vs finetuned module outputs on the same tokens (measures in geometry.py).

One resident model moves between alpha = 0 and the finetuned point with the path engine (two weight switches per
data set, no second model); each probed module's outputs are kept on the host for at most `max_tokens` tokens
and compared one module at a time on the model's device. The model is left at its base when done.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import adapters, engine, models
from ..checkpoint import Finetune
from ..errors import RewindError
from . import geometry
from .common import by_type, layer_plot, module_type, plan_report, probe_report, report_dir, title
from .data import Probe, stream, texts

JSON, PLOT = "activations.json", "activations.png"
DEFAULT_TYPES = ("q", "k", "v", "down")
DEFAULT_LAYER_COUNT = 4
METRICS = (
    "cka",
    "procrustes_residual",
    "procrustes_raw",
    "gram_distortion",
    "cosine",
    "cosine_drift",
    "norm_ratio",
    "norm_drift",
)


def probed_modules(model, modules: list[str] | None = None, layers: list[int] | None = None) -> list[str]:
    """Linear modules to probe: `modules` types (q, k, v, o, gate, up, down, ...) at `layers`, or full module
    names. Defaults: q, k, v, down at DEFAULT_LAYER_COUNT evenly spaced layers, first and last included."""
    num_layers = int(model.config.num_hidden_layers)
    if layers is None:
        count = min(DEFAULT_LAYER_COUNT, num_layers)
        layers = sorted({round(i * (num_layers - 1) / max(count - 1, 1)) for i in range(count)})
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise RewindError(f"--probe-layers {','.join(map(str, bad))}: the model has layers 0..{num_layers - 1}")
    wanted = list(modules or DEFAULT_TYPES)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    unknown = [w for w in wanted if w not in linear and w not in {module_type(n) for n in linear}]
    if unknown:
        raise RewindError(f"--modules {','.join(unknown)}: not a linear module or module type of this model")
    chosen = [n for n in linear if n in wanted or (module_type(n) in wanted and adapters.layer_of(n + ".") in layers)]
    if not chosen:
        raise RewindError(
            f"--modules {','.join(wanted)}: no linear module matches at layers {','.join(map(str, layers))}"
        )
    return chosen


def parse_layers(spec: str | None) -> list[int] | None:
    """`--probe-layers 0,7,14` -> [0, 7, 14]; None keeps the default."""
    if spec is None:
        return None
    try:
        return [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise RewindError(f"--probe-layers {spec!r}: give comma-separated layer indices") from None


def run(
    finetune: Finetune,
    out: str | Path,
    probe: Probe = Probe(),
    modules: list[str] | None = None,
    layers: list[int] | None = None,
    max_tokens: int = 4096,
    gram_tokens: int = 1024,
    device: str | None = None,
    dtype: str = "auto",
    resident=None,
    plots: bool = True,
) -> dict:
    """Activation geometry of the probed modules on each of the probe's data sets; writes JSON and a PNG.

    `resident`: a (model, tokenizer) of this base already loaded; it is moved and then returned to its base.
    """
    out = Path(out)
    plan = plan_report(finetune, out)
    suites = probe.suites()
    if max_tokens < 2 or gram_tokens < 2:
        raise RewindError("--max-tokens must be at least 2")
    model, tokenizer = resident or models.load_base(finetune.base, device, dtype)
    names = probed_modules(model, modules, layers)
    rewinder = engine.Rewinder(model, plan.update, plan.point.path, plan.point.cayley_scale)
    rows, counts = _measure(model, tokenizer, rewinder, plan, names, suites, probe, max_tokens, gram_tokens)
    report_dir(out)
    summary = {data: by_type([r for r in rows if r["data"] == data], METRICS) for data in suites}
    drawn = [plot(rows, list(suites), out / PLOT, title(plan))] if plots else []
    fields = dict(max_tokens=max_tokens, gram_tokens=gram_tokens, data=counts, probed=names)
    return probe_report(out / JSON, "activations", plan, probe, rows, summary, drawn, **fields)


def _measure(model, tokenizer, rewinder, plan, names, suites, probe, max_tokens, gram_tokens) -> tuple[list, dict]:
    """The rows of every probed module and data set, and what each data set fed in; the model leaves at its base."""
    rows, counts = [], {}
    try:
        for data, suite in suites.items():
            items = texts(suite, probe.split, probe.limit, tokenizer, probe.include_path)
            outputs = {}
            for side in ("base", "finetune"):
                if side == "base":
                    rewinder.set(0.0)
                else:
                    rewinder.set(plan.point.alpha, plan.point.schedule, plan.allow_extrapolation)
                desc = f"activations {data} {side}"
                outputs[side], tokens = _outputs(model, tokenizer, items, names, probe, max_tokens, desc)
            counts[data] = {"suite": suite, "items": len(items), "tokens": tokens}
            rows += _compare(outputs, names, data, gram_tokens, next(model.parameters()).device)
    finally:
        rewinder.set(0.0)  # alpha 0 writes W0 back: the resident model leaves exactly as it came
    return rows, counts


def _outputs(model, tokenizer, items, names, probe: Probe, max_tokens: int, desc: str) -> tuple[dict, int]:
    """Each probed module's outputs on `items` at the model's current point, and the tokens seen."""
    kept = {n: [] for n in names}
    hooks = {n: _keep(kept[n]) for n in names}
    tokens = stream(model, tokenizer, items, hooks, "output", probe.batch_size, probe.max_length, max_tokens, desc=desc)
    return {n: torch.cat(chunks) for n, chunks in kept.items()}, tokens


def _compare(outputs: dict, names: list[str], data: str, gram_tokens: int, compute) -> list[dict]:
    """One row per module: the geometry of its finetuned outputs against its base outputs (on `compute`)."""
    rows = []
    for n in names:
        x0, x1 = outputs["base"].pop(n).to(compute), outputs["finetune"].pop(n).to(compute)
        row = {"module": n, "type": module_type(n), "layer": adapters.layer_of(n + "."), "data": data}
        rows.append({**row, **geometry.compare(x0, x1, gram_tokens)})
        del x0, x1
    return rows


def _keep(chunks: list):
    # Host copies in fp32: the device holds one batch of activations at a time.
    return lambda x: chunks.append(x.detach().float().cpu())


def plot(rows: list[dict], data: list[str], path: Path, title: str = "") -> str:
    """activations.png: each measure by layer, one line per module type and data set."""
    keys = ("cka", "procrustes_residual", "gram_distortion", "cosine_drift", "norm_drift")
    return layer_plot(rows, data, keys, lambda r, d, key: r[key] if r["data"] == d else None, path, title)
