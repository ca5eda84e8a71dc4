"""`rewind diagnose csd`: capability-conditioned drift, how much an update moves what a module computes on the
inputs a capability actually feeds it.

For each adapted linear module, with h its input in the BASE model (tokens of the probe data) and dW = W' - W0:
    csd_abs  = E ||dW h||^2
    csd_rel  = E ||dW h||^2 / E ||W0 h||^2
    csd_norm = E ||dW h||^2 / (||dW||_F^2 E ||h||^2)
csd_norm is where the update points: 1/d_in for inputs spread evenly over all directions, at most
sigma_1(dW)^2 / ||dW||_F^2 (1 for a rank-1 update aimed at the inputs), 0 when dW misses them; null for dW = 0.
Biases are not part of W h. One resident base model; dW of a module is recomputed from the path engine on every
batch, so no second copy of the adapted weights is ever held.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import adapters, models
from ..checkpoint import Finetune
from ..errors import RewindError
from .common import by_type, layer_plot, matrices, module_of, module_type, plan_report, probe_report, report_dir, title
from .data import Probe, stream, texts

JSON, PLOT = "csd.json", "csd.png"
METRICS = ("csd_abs", "csd_rel", "csd_norm")


class _Drift:
    """Running sums over tokens for one module and one data set."""

    def __init__(self, plan, name: str, weight: torch.Tensor):
        self.plan, self.name, self.weight = plan, name, weight
        self.n = 0
        self.dw_h = self.w0_h = self.h = self.dw_fro2 = 0.0

    def __call__(self, h: torch.Tensor) -> None:
        w0 = self.weight.detach().float()
        dw = self.plan.moved(self.name, w0) - w0
        h = h.float()
        self.n += h.shape[0]
        self.dw_h += float((h @ dw.T).square().sum())
        self.w0_h += float((h @ w0.T).square().sum())
        self.h += float(h.square().sum())
        self.dw_fro2 = float(dw.square().sum())

    def result(self) -> dict:
        n = max(self.n, 1)
        dw_h, w0_h, h = self.dw_h / n, self.w0_h / n, self.h / n
        return {
            "n_tokens": self.n,
            "delta_fro2": self.dw_fro2,
            "h_norm2": h,
            "w0h_norm2": w0_h,
            "csd_abs": dw_h,
            "csd_rel": dw_h / w0_h if w0_h > 0 else None,
            "csd_norm": dw_h / (self.dw_fro2 * h) if self.dw_fro2 > 0 and h > 0 else None,
        }


def run(
    finetune: Finetune,
    out: str | Path,
    probe: Probe = Probe(),
    modules: list[str] | None = None,
    device: str | None = None,
    dtype: str = "auto",
    resident=None,
    plots: bool = True,
) -> dict:
    """CSD of every adapted linear module (or those `modules` names) on each of the probe's data sets.

    `resident`: a (model, tokenizer) of this base already loaded, left unchanged (e.g. shared by `rewind arena`).
    """
    out = Path(out)
    plan = plan_report(finetune, out)
    suites = probe.suites()
    model, tokenizer = resident or models.load_base(finetune.base, device, dtype)
    rows, counts = _measure(model, tokenizer, plan, _linear(model, plan, modules), suites, probe)
    summary = _summary(rows, suites)
    report_dir(out)
    drawn = [plot(rows, list(suites), out / PLOT, title(plan))] if plots else []
    return probe_report(out / JSON, "csd", plan, probe, rows, summary, drawn, data=counts)


def _linear(model, plan, modules: list[str] | None) -> list[str]:
    """The adapted weights of linear modules (`modules` of them): embeddings have no input vector h."""
    named = dict(model.named_modules())
    shapes = {k: p.shape for k, p in model.named_parameters(remove_duplicate=False)}
    names = [n for n in matrices(plan, shapes, modules) if isinstance(named[module_of(n)], torch.nn.Linear)]
    if not names:
        raise RewindError("no adapted linear module to measure (embeddings and norms have no input vector h)")
    return names


def _measure(model, tokenizer, plan, names: list[str], suites: dict, probe: Probe) -> tuple[list[dict], dict]:
    """One row per module with its drift on each data set, and what each data set fed in."""
    params = dict(model.named_parameters(remove_duplicate=False))
    rows = {n: {"module": module_of(n), "type": module_type(n), "layer": adapters.layer_of(n)} for n in names}
    for n in names:
        rows[n].update(shape=list(params[n].shape), alpha=plan.alphas[n])
    counts = {}
    for data, suite in suites.items():
        items = texts(suite, probe.split, probe.limit, tokenizer, probe.include_path)
        drifts = {n: _Drift(plan, n, params[n]) for n in names}
        hooks = {module_of(n): d for n, d in drifts.items()}
        tokens = stream(model, tokenizer, items, hooks, "input", probe.batch_size, probe.max_length, desc=f"csd {data}")
        counts[data] = {"suite": suite, "items": len(items), "tokens": tokens}
        for n, d in drifts.items():
            rows[n][data] = d.result()
    return list(rows.values()), counts


def _summary(rows: list[dict], suites: dict) -> dict:
    """Per module type: each data set's metrics, and general over target where both were probed."""
    flat = [{**r, **{f"{data}.{m}": r[data][m] for data in suites for m in METRICS}} for r in rows]
    summary = by_type(flat, [f"{data}.{m}" for data in suites for m in METRICS])
    if len(suites) == 2:
        for entry in summary.values():
            g, t = entry["general.csd_rel"]["mean"], entry["target.csd_rel"]["mean"]
            entry["general_over_target_rel"] = g / t if g is not None and t else None
    return summary


def plot(rows: list[dict], data: list[str], path: Path, title: str = "") -> str:
    """csd.png: csd_rel and csd_norm by layer, one line per module type and data set."""
    return layer_plot(rows, data, ("csd_rel", "csd_norm"), lambda r, d, metric: r[d][metric], path, title, log=True)
