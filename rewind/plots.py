"""pareto.png: target vs general, one line per path through its alpha points, frontier and base/final marked."""

from __future__ import annotations

import io
from pathlib import Path

from . import files


def pareto_plot(
    points: list[dict], frontier_keys: set[str], selected_key: str | None, out: Path, title: str = ""
) -> Path:
    """`points`: dicts with key, path, alpha, target, general (validation scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    ends = [p for p in points if p["path"] in ("base", "final")]
    searched = [p for p in points if p.get("layers")]
    points = [p for p in points if not p.get("layers")]
    paths = sorted({p["path"] for p in points} - {"base", "final"})
    for i, path in enumerate(paths):
        line = sorted(
            [p for p in points if p["path"] == path] + ([] if path == "train" else ends),
            key=lambda p: (p["alpha"] if p["path"] != "base" else -1, p["path"] == "final"),
        )
        ax.plot(
            [p["target"] for p in line], [p["general"] for p in line], "o-", ms=4, lw=1.4, color=f"C{i}", label=path
        )
        for p in line:
            if p["path"] == path:
                ax.annotate(
                    f"{p['alpha']:g}",
                    (p["target"], p["general"]),
                    fontsize=6,
                    alpha=0.7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    if searched:  # per-layer schedules are points, not a line: there is no single alpha to order them by
        ax.plot(
            [p["target"] for p in searched],
            [p["general"] for p in searched],
            "x",
            ms=6,
            mew=1.4,
            color=f"C{len(paths)}",
            label="per-layer search",
        )
        points = points + searched
    front = sorted([p for p in points if p["key"] in frontier_keys], key=lambda p: p["target"])
    ax.plot(
        [p["target"] for p in front],
        [p["general"] for p in front],
        "s",
        ms=10,
        mfc="none",
        mec="k",
        mew=1.2,
        label="Pareto frontier",
    )
    for p in ends:
        ax.plot(
            p["target"],
            p["general"],
            "*" if p["path"] == "base" else "D",
            ms=13,
            color="k",
            label=f"{p['path']} (alpha={p['alpha']:g})",
        )
    chosen = next((p for p in points if p["key"] == selected_key), None)
    if chosen:
        kind = " per-layer" if chosen.get("layers") else ""
        ax.plot(
            chosen["target"],
            chosen["general"],
            "o",
            ms=16,
            mfc="none",
            mec="red",
            mew=2,
            label=f"selected: {chosen['path']} {chosen['alpha']:g}{kind}",
        )
    ax.set_xlabel("target score (validation)")
    ax.set_ylabel("general score (validation)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    files.write_atomic(out, png.getvalue())  # a full disk leaves the previous plot, not half a PNG
    return out
