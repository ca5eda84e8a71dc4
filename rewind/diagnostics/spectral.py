"""`rewind diagnose spectral`: how each adapted matrix moved, seen in the base matrix's own singular basis.

For W0 = U S V^T (fp32) and W' = W(alpha) on the chosen path (dW = W' - W0), per matrix:
- retention profile  d_i = u_i^T W' v_i against sigma_i, and its deviation |d_i - sigma_i|;
- adaptation profile a_i = ||dW v_i||;
- effective rank of dW: ||dW||_F^2 / sigma_1(dW)^2;
- fluctuation of |d - sigma| and of a: mean |x_i - m_i|, m the 5-point centred moving average (reflect-padded);
- spectrum shift ||sigma' - sigma|| / ||sigma||, sigma' the singular values of W';
- OFT: alignment |cos(v_i, v'_i)| of the right singular vectors of W0 and W'.
Matrices are read and decomposed one at a time; profiles go to spectral_profiles.npz, scalars to spectral.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import adapters, models
from ..checkpoint import Finetune
from ..progress import Bar
from ..updates.oft import Rotation
from .common import (
    by_type,
    describe,
    matrices,
    module_of,
    module_type,
    plan_report,
    pyplot,
    report_dir,
    title,
    write_json,
)

WINDOW = 5
JSON, PROFILES = "spectral.json", "spectral_profiles.npz"
SCALARS = (
    "relative_update",
    "effective_rank",
    "retention_deviation_mean",
    "retention_deviation_max",
    "retention_deviation_rel",
    "adaptation_mean",
    "adaptation_max",
    "fluctuation_retention",
    "fluctuation_adaptation",
    "spectrum_shift",
    "alignment_mean",
    "alignment_min",
)


def fluctuation(values: torch.Tensor, window: int = WINDOW) -> float | None:
    """Mean absolute deviation from the centred `window`-point moving average (ends reflect-padded, as in
    PEFT-Arena); None for a profile shorter than the window."""
    x = values.double().flatten()
    if x.numel() < window:
        return None
    pad = window // 2
    padded = torch.nn.functional.pad(x.view(1, 1, -1), (pad, window - 1 - pad), mode="reflect").flatten()
    return float((x - padded.unfold(0, window, 1).mean(1)).abs().mean())


def profile(
    w0: torch.Tensor, w1: torch.Tensor, rotation: bool = False, window: int = WINDOW
) -> tuple[dict[str, float | None], dict[str, torch.Tensor]]:
    """(scalars, profiles) of one matrix moving from w0 to w1; `rotation` adds OFT's singular-vector alignment."""
    w0, w1 = w0.float(), w1.float()
    U, S, Vh = torch.linalg.svd(w0, full_matrices=False)
    delta = w1 - w0
    retention = ((U.T @ w1) * Vh).sum(1)  # diag(U^T W' V) without the k x k product
    deviation = (retention - S).abs()
    adaptation = torch.linalg.vector_norm(delta @ Vh.T, dim=0)
    fro = torch.linalg.matrix_norm(delta)
    top = torch.linalg.matrix_norm(delta, ord=2)
    profiles = {"sigma": S, "retention": retention, "retention_deviation": deviation, "adaptation": adaptation}
    if rotation:
        _, S1, Vh1 = torch.linalg.svd(w1, full_matrices=False)
        profiles["alignment"] = (Vh * Vh1).sum(1).abs()  # rows of Vh are unit vectors: the dot is the cosine
    else:
        S1 = torch.linalg.svdvals(w1)
    profiles["sigma_prime"] = S1
    scalars = {
        "relative_update": float(fro / torch.linalg.matrix_norm(w0)),
        "effective_rank": float(fro**2 / top**2) if top > 0 else None,  # undefined for dW = 0
        "retention_deviation_mean": float(deviation.mean()),
        "retention_deviation_max": float(deviation.max()),
        "retention_deviation_rel": float(deviation.sum() / S.sum()),
        "adaptation_mean": float(adaptation.mean()),
        "adaptation_max": float(adaptation.max()),
        "fluctuation_retention": fluctuation(deviation, window),
        "fluctuation_adaptation": fluctuation(adaptation, window),
        "spectrum_shift": float(torch.linalg.vector_norm(S1 - S) / torch.linalg.vector_norm(S)),
        "alignment_mean": float(profiles["alignment"].mean()) if rotation else None,
        "alignment_min": float(profiles["alignment"].min()) if rotation else None,
    }
    return scalars, {k: v.cpu() for k, v in profiles.items()}


def run(
    finetune: Finetune,
    out: str | Path,
    modules: list[str] | None = None,
    device: str | None = None,
    window: int = WINDOW,
    plots: bool = True,
) -> dict:
    """Spectral diagnostics of every adapted matrix (or those `modules` names); writes JSON, NPZ and PNGs."""
    import numpy as np

    out = Path(out)
    plan = plan_report(finetune, out)
    device = models.pick_device(device)
    base = plan.tensors
    rows, arrays = [], {}
    for name in Bar(matrices(plan, base.shapes, modules), desc="spectral", unit="matrix", leave=False):
        w0 = base(name).to(device)
        rotation = isinstance(plan.update.deltas[name], Rotation)
        scalars, profiles = profile(w0, plan.moved(name, w0.float()), rotation, window)
        rows.append(
            {
                "module": module_of(name),
                "type": module_type(name),
                "layer": adapters.layer_of(name),
                "shape": list(w0.shape),
                "alpha": plan.alphas[name],
                **scalars,
            }
        )
        arrays.update({f"{module_of(name)}::{key}": value.numpy() for key, value in profiles.items()})
        del w0
    report_dir(out)
    np.savez_compressed(out / PROFILES, **arrays)
    report = {
        "kind": "spectral",
        **describe(plan),
        "window": window,
        "profiles": PROFILES,
        "plots": plot(rows, arrays, out, title(plan)) if plots else [],
        "matrices": rows,
        "summary": by_type(rows, SCALARS),
    }
    write_json(out / JSON, report)
    return report


def plot(rows: list[dict], arrays: dict, out: Path, title: str = "") -> list[str]:
    """spectral_<type>.png per module type (profiles over the singular index, one line per layer) and
    spectral_summary.png (per-layer scalars of every type)."""
    types = list(dict.fromkeys(r["type"] for r in rows))
    written = [_type_plot(kind, [r for r in rows if r["type"] == kind], arrays, out, title) for kind in types]
    return [*written, _summary_plot(rows, types, out, title)]


def _type_plot(kind: str, mine: list[dict], arrays: dict, out: Path, title: str) -> str:
    """spectral_<kind>.png: each profile of the type's matrices over the singular index, one line per layer."""
    import numpy as np

    plt = pyplot()
    panels = [
        ("retention_deviation", "|u_i^T W' v_i - sigma_i|", True),
        ("adaptation", "||dW v_i||", True),
        ("retention", "u_i^T W' v_i / sigma_i", False),
    ]
    if mine[0]["alignment_mean"] is not None:  # a rotation
        panels.append(("alignment", "|cos(v_i, v'_i)|", False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), dpi=110, squeeze=False)
    shades, colorbar = _shades(mine)
    for ax, (key, label, log) in zip(axes[0], panels):
        for r, shade in zip(mine, shades):
            y = arrays[f"{r['module']}::{key}"]
            if key == "retention":
                y = y / np.maximum(arrays[f"{r['module']}::sigma"], 1e-30)
            ax.plot(y, lw=0.8, color=shade, label=f"layer {r['layer']}" if r["layer"] is not None else r["module"])
        ax.set_xlabel("singular index i (descending sigma_i)")
        ax.set_title(label, fontsize=9)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{kind}: {title}", fontsize=9)
    fig.tight_layout()
    if colorbar is None:
        axes[0][0].legend(fontsize=6, ncol=2)
    else:
        fig.colorbar(colorbar, ax=list(axes[0]), label="layer", fraction=0.02, pad=0.01)
    path = out / f"spectral_{kind}.png"
    fig.savefig(path)
    plt.close(fig)
    return path.name


def _summary_plot(rows: list[dict], types: list[str], out: Path, title: str) -> str:
    """spectral_summary.png: per-layer scalars, one line per module type."""
    plt = pyplot()
    keys = ["effective_rank", "fluctuation_retention", "fluctuation_adaptation", "spectrum_shift"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), dpi=110)
    for ax, key in zip(axes, keys):
        for j, kind in enumerate(types):
            mine = [r for r in rows if r["type"] == kind and r["layer"] is not None and r[key] is not None]
            ax.plot([r["layer"] for r in mine], [r[key] for r in mine], "o-", ms=3, lw=1, color=f"C{j}", label=kind)
        ax.set_xlabel("layer")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "spectral_summary.png")
    plt.close(fig)
    return "spectral_summary.png"


def _shades(rows: list[dict]):
    """Line colours by layer (viridis), and a colour bar to key them when a legend would list too many lines."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    layers = [r["layer"] for r in rows]
    if None in layers:
        return [cmap(i / max(len(rows) - 1, 1)) for i in range(len(rows))], None
    scale = matplotlib.colors.Normalize(min(layers), max(max(layers), min(layers) + 1))
    bar = matplotlib.cm.ScalarMappable(scale, cmap) if len(rows) > 8 else None
    return [cmap(scale(layer)) for layer in layers], bar
