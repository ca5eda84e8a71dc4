"""A sweep's plots, drawn from its summary.json object: the frontier (the report's SVG and the sweep dir's
pareto.png), target and general against alpha, the training trajectory.

Colours follow the sweep's path order in every plot (base and final in black, the selected point ringed red), so
one legend reads for all three.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from . import files

LABEL_LIMIT = 12  # alpha labels on a path's points up to this many points; beyond, the line says enough

ENDS = ("base", "final")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 10, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def colours(summary: dict) -> dict[str, str]:
    names = list(summary["paths"]) + ["train", "search"]
    return {name: f"C{i}" for i, name in enumerate(dict.fromkeys(names))}


def _uniform(summary: dict, path: str) -> list[dict]:
    """A path's line: base, its interior alphas, final (by alpha)."""
    points = summary["points"]
    ends = {p["path"]: p for p in points if p["path"] in ENDS}
    inner = sorted((p for p in points if p["path"] == path and not p.get("layers")), key=lambda p: p["alpha"])
    return [ends[e] for e in ("base",) if e in ends] + inner + [ends[e] for e in ("final",) if e in ends]


def _alpha(p: dict) -> float:
    return {"base": 0.0, "final": 1.0}.get(p["path"], p["alpha"])


def _errorbars(ax, points: list[dict], colour: str) -> None:
    for p in points:
        x, y = ci_bounds(p.get("target_ci"), p["target"]), ci_bounds(p.get("general_ci"), p["general"])
        if x or y:
            ax.errorbar(
                p["target"],
                p["general"],
                xerr=[[p["target"] - x[0]], [x[1] - p["target"]]] if x else None,
                yerr=[[p["general"] - y[0]], [y[1] - p["general"]]] if y else None,
                fmt="none",
                ecolor=colour,
                alpha=0.45,
                lw=1,
                capsize=2,
            )


def _points(ax, points: list[dict], style: str, colour: str, label: str, **kw) -> None:
    ax.plot([p["target"] for p in points], [p["general"] for p in points], style, color=colour, label=label, **kw)


def _labels(ax, points: list[dict], text, colour: str, size: int, offset: tuple[int, int]) -> None:
    for p in points[:LABEL_LIMIT]:
        ax.annotate(
            text(p), (p["target"], p["general"]), fontsize=size, color=colour, xytext=offset, textcoords="offset points"
        )


def _frontier_figure(summary: dict):
    plt = _pyplot()
    colour = colours(summary)
    fig, ax = plt.subplots(figsize=(8.2, 5.6))
    for path in summary["paths"]:
        line = _uniform(summary, path)
        _points(ax, line, "o-", colour[path], f"{path} path", ms=4, lw=1.5, zorder=3)
        _errorbars(ax, line, colour[path])
        inner = [p for p in line if p["path"] == path]
        if len(inner) <= LABEL_LIMIT:
            _labels(ax, inner, lambda p: f"{p['alpha']:g}", colour[path], 8, (4, 3))
    _trajectory_line(ax, summary, colour["train"])
    searched = [p for p in summary["points"] if p.get("layers")]
    if searched:
        label = f"per-layer search ({len(searched)})"
        _points(ax, searched, "x", colour["search"], label, ms=6, mew=1.3, zorder=3)
        _errorbars(ax, searched, colour["search"])
    _marks(ax, summary)
    ax.set_xlabel("target score (validation) →")
    ax.set_ylabel("general score (validation) →")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return fig, ax


def frontier(summary: dict) -> str:
    """The frontier as inline SVG (the HTML report)."""
    fig, _ = _frontier_figure(summary)
    fig.tight_layout()
    return _close(fig, svg_of(fig))


def frontier_png(summary: dict, out: Path) -> Path:
    """The frontier as a PNG file (the sweep dir's pareto.png), titled with what was swept."""
    fig, ax = _frontier_figure(summary)
    ax.set_title(f"{summary['method']} on {summary['base']} ({', '.join(summary['paths'])})", fontsize=9)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    files.write_atomic(out, _close(fig, png.getvalue()))  # a full disk leaves the previous plot, not half a PNG
    return out


def _close(fig, rendered):
    import matplotlib.pyplot as plt

    plt.close(fig)
    return rendered


def _trajectory_line(ax, summary: dict, colour: str) -> None:
    train = _train(summary)
    if not train:
        return
    ends = {p["path"]: p for p in summary["points"] if p["path"] in ENDS}
    line = [ends["base"], *train] if "base" in ends else train
    _points(ax, line, "^--", colour, "training checkpoints", ms=5, lw=1.1, zorder=2)
    _labels(ax, train, lambda p: f"step {p['alpha']:g}", colour, 7, (4, -9))


def _train(summary: dict) -> list[dict]:
    return sorted((p for p in summary["points"] if p["path"] == "train"), key=lambda p: p["alpha"])


def _marks(ax, s: dict) -> None:
    """Frontier squares, base star, final diamond, the selected ring and the rule's general floor."""
    front = sorted((p for p in s["points"] if p["key"] in set(s["frontier"])), key=lambda p: p["target"])
    _points(ax, front, "s", "none", "Pareto frontier", ms=10, mfc="none", mec="#444", mew=1, zorder=4)
    base, final, sel = s["base_point"], s["final_point"], s["selected"]
    ax.plot(base["target"], base["general"], "*", ms=15, color="k", label="base (α = 0)", zorder=5)
    ax.plot(final["target"], final["general"], "D", ms=9, color="k", label="final (α = 1)", zorder=5)
    ax.plot(
        sel["target"],
        sel["general"],
        "o",
        ms=17,
        mfc="none",
        mec="#d62728",
        mew=2.2,
        label=f"selected: {sel['key']}",
        zorder=6,
    )
    if s["rule"] == "max-target-within":
        floor = base["general"] - float(s.get("tolerance", 1.0))
        ax.axhline(floor, color="#d62728", lw=0.8, ls=":", label=f"general floor ({floor:.2f})", zorder=1)


def against_alpha(s: dict) -> str:
    plt = _pyplot()
    colour = colours(s)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.9), sharex=True)
    for ax, role in zip(axes, ("target", "general")):
        for path in s["paths"]:
            line = _uniform(s, path)
            ax.plot(
                [_alpha(p) for p in line], [p[role] for p in line], "o-", ms=4, lw=1.5, color=colour[path], label=path
            )
        sel = s["selected"]
        if not sel.get("layers") and sel["path"] != "train":
            ax.plot(_alpha(sel), sel[role], "o", ms=14, mfc="none", mec="#d62728", mew=2, label="selected")
        if role == "general" and s["rule"] == "max-target-within":
            ax.axhline(s["base_point"]["general"] - float(s.get("tolerance", 1.0)), color="#d62728", lw=0.8, ls=":")
        ax.set_title(f"{role} (validation)", fontsize=10)
        ax.set_xlabel("α (0 = base, 1 = final)")
        ax.grid(alpha=0.25)
    axes[0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _close(fig, svg_of(fig))


def trajectory(summary: dict) -> str | None:
    """Target and general by training step (the sweep's --checkpoints), or None without checkpoints."""
    train = _train(summary)
    if not train:
        return None
    plt = _pyplot()
    colour = colours(summary)["train"]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.4), sharex=True)
    base = summary["base_point"]
    for ax, role in zip(axes, ("target", "general")):
        ax.plot([0] + [p["alpha"] for p in train], [base[role]] + [p[role] for p in train], "^-", color=colour)
        ax.set_title(f"{role} (validation)", fontsize=10)
        ax.set_xlabel("training step (0 = base)")
        ax.grid(alpha=0.25)
    fig.tight_layout()
    return _close(fig, svg_of(fig))


def ci_bounds(value, centre: float) -> tuple[float, float] | None:
    """A point's `target_ci` / `general_ci`: [low, high], or one half-width; None when absent."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return centre - value, centre + value
    low, high = value
    return float(low), float(high)


def svg_of(fig) -> str:
    """A matplotlib figure as inline SVG: text kept as text, no XML prolog, no fixed pixel size."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", svg, count=1)
