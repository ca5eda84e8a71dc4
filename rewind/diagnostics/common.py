"""What every diagnostic shares: the finetuned point, module names, output.

The point is planned by `checkpoint.Plan`, as `rewind export` plans it, so a diagnostic checks its inputs and gives
each tensor its alpha exactly as export would, and W(alpha) comes from the same path classes (`Plan.moved`, one
tensor at a time, in fp32): the weights a diagnostic measures are the weights that export writes, at higher
precision.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .. import adapters, outdir
from ..checkpoint import Finetune, Plan
from ..errors import RewindError

# Module leaf names -> the short types the reports group by; other adapted matrices keep their leaf name.
MODULE_TYPES = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
}


def plan_report(finetune: Finetune, out: str | Path) -> Plan:
    """Every input checked and every tensor's alpha decided; `out` is made only when results are written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RewindError(f"--out {out} is a file, not a dir")
    # force: a diagnostics dir may already hold other reports. Reports only add files, so unlike an export's --out,
    # a report dir may lie inside the adapter dir (no check that it spares the inputs).
    outdir.check_out(out, force=True)
    return Plan.of(finetune)


def module_of(name: str) -> str:
    """'model.layers.3.mlp.down_proj.weight' -> 'model.layers.3.mlp.down_proj'."""
    return name.rsplit(".", 1)[0]


def module_type(name: str) -> str:
    """The short type of a module or parameter name: q, k, v, o, gate, up, down, or the module's leaf name."""
    leaf = module_of(name).rsplit(".", 1)[-1] if name.endswith((".weight", ".bias")) else name.rsplit(".", 1)[-1]
    return MODULE_TYPES.get(leaf, leaf)


def parse_modules(spec: str | Sequence[str] | None) -> list[str] | None:
    """`--modules q,v,down` or full module names; None means every adapted matrix."""
    if spec is None:
        return None
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise RewindError("--modules is empty: give module types (q,k,v,o,gate,up,down) or module names")
    return items


def matrices(plan: Plan, shapes: Mapping[str, Sequence[int]], wanted: Sequence[str] | None = None) -> list[str]:
    """The adapted 2-D weights of a plan (biases and norms skipped), input side first, filtered by `wanted`."""
    names = [n for n in plan.update.deltas if n.endswith(".weight") and len(shapes[n]) == 2]
    if wanted is not None:
        names = [n for n in names if module_type(n) in wanted or module_of(n) in wanted]
        if not names:
            kinds = sorted({module_type(n) for n in plan.update.deltas})
            raise RewindError(
                f"--modules {','.join(wanted)}: matches no adapted matrix (this adapter has {', '.join(kinds)})"
            )
    return sorted(names, key=_order)


def _order(name: str) -> tuple:
    layer = adapters.layer_of(name)
    return (layer is None, -1 if layer is None else layer, name)


def title(plan: Plan) -> str:
    """A report plot's title: the method and the point."""
    return f"{plan.update.method.name} {plan.point.describe()}"


def probe_report(path: Path, kind: str, plan: Plan, probe, rows: list[dict], summary: dict, plots, **fields) -> dict:
    """The report of a diagnostic that probes data (csd, activations), written to `path`: what it was computed on
    and `fields`, then its plots, rows and summary."""
    head = {"kind": kind, **describe(plan), "split": probe.split, "max_length": probe.max_length}
    report = {**head, **fields, "plots": plots, "modules": rows, "summary": summary}
    write_json(path, report)
    return report


def describe(plan: Plan) -> dict:
    """What a report was computed on: enough to tell two reports apart."""
    return {
        "base": plan.base,
        "adapter": str(plan.adapter),
        "adapter_sha256": plan.update.sha256,
        "method": plan.update.method.name,
        "point": plan.point.describe(),
        "path": plan.point.path,
        "alpha": plan.point.alpha,
        "layers": plan.point.schedule.describe(),
        "cayley_scale": plan.point.cayley_scale,
    }


def clean(value):
    """JSON-safe: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_dir(out: Path) -> Path:
    """Made at the first write, after every input was checked: a refused run leaves nothing behind."""
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(clean(data), indent=2) + "\n")
    return path


def stats(values: Iterable[float | None]) -> dict:
    """mean/min/max over the defined values (None and NaN skipped); all null when none is defined."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def by_type(rows: list[dict], keys: Sequence[str]) -> dict:
    """Per module type (and 'all'): each key's mean/min/max over the rows, and its value layer by layer."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["type"], []).append(row)
    groups["all"] = rows
    out = {}
    for kind, members in groups.items():
        entry = {"n": len(members), "layers": [m["layer"] for m in members]}
        for key in keys:
            values = [m.get(key) for m in members]
            entry[key] = {**stats(values), **({"by_layer": values} if kind != "all" else {})}
        out[kind] = entry
    return out


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers or in tests)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def layer_plot(
    rows: list[dict], data: list[str], metrics: Sequence[str], value, path: Path, title: str = "", log: bool = False
) -> str:
    """One panel per metric: value(row, data, metric) by layer, one line per module type and data set."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 1.8, 3.5), dpi=110, squeeze=False)
    types = list(dict.fromkeys(r["type"] for r in rows))
    for ax, metric in zip(axes[0], metrics):
        for j, kind in enumerate(types):
            for style, d in zip(("o-", "s--"), data):
                mine = [(r["layer"], value(r, d, metric)) for r in rows if r["type"] == kind and r["layer"] is not None]
                mine = [(layer, v) for layer, v in mine if v is not None and (v or not log)]
                ax.plot(
                    [m[0] for m in mine], [m[1] for m in mine], style, ms=3, lw=1, color=f"C{j}", label=f"{kind} ({d})"
                )
        ax.set_xlabel("layer")
        ax.set_title(metric, fontsize=9)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
