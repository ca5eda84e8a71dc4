"""The report's plots, as inline SVG: the frontier, target and general against alpha, the training trajectory.

Colours follow the sweep's path order in every plot (base and final in black, the selected point ringed red), so
one legend reads for all three.
"""

from __future__ import annotations

import io
import re

LABEL_LIMIT = 12  # alpha labels on a path's points up to this many points; beyond, the line says enough

ENDS = ("base", "final")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 10, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def colours(report) -> dict[str, str]:
    names = list(report.summary["paths"]) + ["train", "search"]
    return {name: f"C{i}" for i, name in enumerate(dict.fromkeys(names))}


def _uniform(report, path: str) -> list[dict]:
    """A path's line: base, its interior alphas, final (by alpha)."""
    points = report.points
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


def frontier(report) -> str:
    plt = _pyplot()
    s, colour = report.summary, colours(report)
    fig, ax = plt.subplots(figsize=(8.2, 5.6))
    for path in s["paths"]:
        line = _uniform(report, path)
        ax.plot(
            [p["target"] for p in line],
            [p["general"] for p in line],
            "o-",
            ms=4,
            lw=1.5,
            color=colour[path],
            label=f"{path} path",
            zorder=3,
        )
        _errorbars(ax, line, colour[path])
        inner = [p for p in line if p["path"] == path]
        if len(inner) <= LABEL_LIMIT:
            for p in inner:
                ax.annotate(
                    f"{p['alpha']:g}",
                    (p["target"], p["general"]),
                    fontsize=8,
                    color=colour[path],
                    xytext=(4, 3),
                    textcoords="offset points",
                )
    _trajectory_line(ax, report, colour["train"])
    searched = [p for p in report.points if p.get("layers")]
    if searched:
        ax.plot(
            [p["target"] for p in searched],
            [p["general"] for p in searched],
            "x",
            ms=6,
            mew=1.3,
            color=colour["search"],
            label=f"per-layer search ({len(searched)})",
            zorder=3,
        )
        _errorbars(ax, searched, colour["search"])
    _marks(ax, report)
    ax.set_xlabel("target score (validation) →")
    ax.set_ylabel("general score (validation) →")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    fig.tight_layout()
    svg = svg_of(fig)
    plt.close(fig)
    return svg


def _trajectory_line(ax, report, colour: str) -> None:
    train = sorted((p for p in report.points if p["path"] == "train"), key=lambda p: p["alpha"])
    if not train:
        return
    ends = {p["path"]: p for p in report.points if p["path"] in ENDS}
    line = [ends["base"], *train] if "base" in ends else train
    ax.plot(
        [p["target"] for p in line],
        [p["general"] for p in line],
        "^--",
        ms=5,
        lw=1.1,
        color=colour,
        label="training checkpoints",
        zorder=2,
    )
    for p in train[:LABEL_LIMIT]:
        ax.annotate(
            f"step {p['alpha']:g}",
            (p["target"], p["general"]),
            fontsize=7,
            color=colour,
            xytext=(4, -9),
            textcoords="offset points",
        )


def _marks(ax, report) -> None:
    """Frontier squares, base star, final diamond, the selected ring and the rule's general floor."""
    s = report.summary
    front = sorted((p for p in report.points if p["key"] in set(s["frontier"])), key=lambda p: p["target"])
    ax.plot(
        [p["target"] for p in front],
        [p["general"] for p in front],
        "s",
        ms=10,
        mfc="none",
        mec="#444",
        mew=1,
        label="Pareto frontier",
        zorder=4,
    )
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


def against_alpha(report) -> str:
    plt = _pyplot()
    s, colour = report.summary, colours(report)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.9), sharex=True)
    for ax, role in zip(axes, ("target", "general")):
        for path in s["paths"]:
            line = _uniform(report, path)
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
    svg = svg_of(fig)
    plt.close(fig)
    return svg


def trajectory(report) -> str | None:
    """Target and general by training step (the sweep's --checkpoints), or None without checkpoints."""
    train = sorted((p for p in report.points if p["path"] == "train"), key=lambda p: p["alpha"])
    if not train:
        return None
    plt = _pyplot()
    colour = colours(report)["train"]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.4), sharex=True)
    base = report.summary["base_point"]
    for ax, role in zip(axes, ("target", "general")):
        ax.plot([0] + [p["alpha"] for p in train], [base[role]] + [p[role] for p in train], "^-", color=colour)
        ax.set_title(f"{role} (validation)", fontsize=10)
        ax.set_xlabel("training step (0 = base)")
        ax.grid(alpha=0.25)
    fig.tight_layout()
    svg = svg_of(fig)
    plt.close(fig)
    return svg


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
