"""`rewind arena`: finetunes of one base side by side, scores from their sweeps, and which diagnostic tracks forgetting.

Scores come from each adapter's `rewind sweep` dir (sweep.json + summary.json): the finetune is the sweep's final
point (alpha = 1), the base its base point, on the test split when the sweep scored both there (it always does
once finished), else on validation. forgetting = base general - finetune general (points; > 0 means lost).

Which sweep belongs to which adapter: `sweeps` given explicitly pair with the adapters in order; otherwise a
sweep dir is any dir holding sweep.json among the subdirs of the adapter's own dir and of `sweeps_root` (and the
root itself), and it belongs to the adapter whose resolved path its spec.adapter names. Exactly one must match.

Diagnostics run per adapter at alpha = 1 on the natural path, into OUT/<adapter name>/<diagnostic>/ (JSON only:
`rewind diagnose` draws one adapter's plots), with one resident base model shared by the data-driven ones; each
is reduced to scalars (means over matrices or modules) and correlated with forgetting over the adapters (Pearson
and Spearman, scipy; needs 3 or more adapters).

`include`: earlier arena reports whose rows (scores and diagnostic scalars) join this run's as recorded, first and in
the order given, so an arena grows without its old adapters. They must share this run's base and diagnostics, and,
for csd or activations, the probe's data, target, split, limit and max_length (arena.json records the probe; a
report without one is assumed to match, and a note says so). A name already taken gets a -N suffix. Each computed
row records the dtype its csd and activations ran in; rows of different dtypes get a note.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import asdict
from pathlib import Path

from .. import adapters, models, results, sweep
from ..checkpoint import Finetune
from ..errors import RewindError
from ..progress import Bar
from . import activations, csd, spectral
from .common import plan_report, pyplot, safe_name, write_json
from .data import Probe

DIAGNOSTICS = ("spectral", "csd", "activations")
SPECTRAL_KEYS = (
    "relative_update",
    "effective_rank",
    "retention_deviation_rel",
    "fluctuation_retention",
    "fluctuation_adaptation",
    "spectrum_shift",
)
CSD_KEYS = ("csd_rel", "csd_norm")
ACTIVATION_KEYS = ("cka", "procrustes_residual", "gram_distortion", "cosine_drift", "norm_drift")
JSON, TABLE, CORRELATIONS, MARKDOWN, PLOT = "arena.json", "arena.csv", "correlations.csv", "arena.md", "arena.png"
DATA_DRIVEN = {"csd", "activations"}
# Probe fields an included report must share. Not batch_size: items are batched with right padding and the pads never
# reach a measure, so it changes only floating-point rounding (about 1e-7 relative in fp32 on the tiny test model).
PROBE_KEYS = ("data", "target", "split", "limit", "max_length")


def find_sweep(adapter: str | Path, root: str | Path = ".") -> Path:
    """The one sweep dir whose sweep.json names `adapter` (see the module docstring for where it looks)."""
    adapter, root = Path(adapter).resolve(), Path(root)
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    candidates += sorted(p for p in adapter.iterdir() if p.is_dir()) if adapter.is_dir() else []
    found = []
    for directory in dict.fromkeys(c.resolve() for c in candidates):
        if (directory / results.SWEEP_FILE).is_file():
            record, _ = sweep.load(directory)
            if Path(record["spec"]["adapter"]).resolve() == adapter:
                found.append(directory)
    if len(found) != 1:
        where = f"under {root} or {adapter}"
        what = "no sweep" if not found else f"{len(found)} sweeps ({', '.join(map(str, found))})"
        raise RewindError(
            f"{what} of {adapter} {where}: run `rewind sweep --adapter {adapter} --out DIR` and "
            f"pass --sweep DIR once per adapter, in order"
        )
    return found[0]


def scores(sweep_dir: str | Path, base) -> dict:
    """The adapter's row of scores from its finished sweep, checked against `base`."""
    record, summary = sweep.load(sweep_dir)
    if summary is None:
        raise RewindError(f"the sweep in {sweep_dir} is unfinished (no {sweep.SUMMARY_FILE}): rerun it to the end")
    if not _same_base(summary["base"], base):
        raise RewindError(f"the sweep in {sweep_dir} is of base {summary['base']}, not {models.hub_id(base)}")
    final, start, chosen = summary["final_point"], summary["base_point"], summary["selected"]
    split = "test" if final.get("test") and start.get("test") and chosen.get("test") else "validation"
    pick = (lambda p: p["test"]) if split == "test" else (lambda p: p)
    final, start, chosen = pick(final), pick(start), pick(chosen)
    spec = record["spec"]
    return {
        "sweep": str(sweep_dir),
        "split": split,
        "target": final["target"],
        "general": final["general"],
        "base_target": start["target"],
        "base_general": start["general"],
        "d_target": final["target"] - start["target"],
        "d_general": final["general"] - start["general"],
        "forgetting": start["general"] - final["general"],
        "selected": summary["selected"]["key"],
        "selected_target": chosen["target"],
        "selected_general": chosen["general"],
        "suites": f"target={'+'.join(spec['target'])} general={'+'.join(spec['general'])} limit={spec['limit']}",
    }


def _same_base(recorded: str, base) -> bool:
    given = models.hub_id(base)
    if recorded == given:
        return True
    return Path(recorded).is_dir() and Path(given).is_dir() and Path(recorded).resolve() == Path(given).resolve()


def trainable_params(update: adapters.Update) -> int:
    """Trained parameters: every tensor a peft adapter saved for the model (not VeRA's shared frozen projections);
    for a full finetune, the elements of the tensors it changed."""
    from safetensors import safe_open

    if update.method.name == "full":
        return sum(d.w1.numel() for d in update.deltas.values())
    with safe_open(update.source / adapters.ADAPTER_WEIGHTS, "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(adapters.PEFT_PREFIX))


def scalars(report: dict) -> dict[str, float | None]:
    """One diagnostic report reduced to its arena columns: means over all matrices or modules."""
    summary = report["summary"]
    if report["kind"] == "spectral":
        return {f"spectral.{k}": summary["all"][k]["mean"] for k in SPECTRAL_KEYS}
    if report["kind"] == "csd":
        return {f"csd.{d}.{k}": summary["all"][f"{d}.{k}"]["mean"] for d in report["data"] for k in CSD_KEYS}
    return {f"activations.{d}.{k}": summary[d]["all"][k]["mean"] for d in report["data"] for k in ACTIVATION_KEYS}


def correlate(xs: list, ys: list) -> dict:
    """Pearson and Spearman over the pairs where both are defined; null with fewer than 3 or a constant side."""
    from scipy import stats

    pairs = [(x, y) for x, y in zip(xs, ys) if _defined(x) and _defined(y)]
    out = {"n": len(pairs), "pearson_r": None, "pearson_p": None, "spearman_rho": None, "spearman_p": None}
    if len(pairs) < 3 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
        return out
    x, y = zip(*pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on tiny n; the n column says how much to trust it
        pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    out.update(
        pearson_r=float(pearson.statistic),
        pearson_p=float(pearson.pvalue),
        spearman_rho=float(spearman.statistic),
        spearman_p=float(spearman.pvalue),
    )
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in out.items()}


def _defined(v) -> bool:
    return v is not None and math.isfinite(v)


def included(path: str | Path, base, diagnostics: tuple[str, ...], probe: Probe) -> tuple[list[dict], str | None]:
    """The rows of an earlier arena report (its dir or its arena.json), each with "from" (the arena.json whose run
    computed it), checked against this run; and a note when the report did not record the probe that mattered."""
    path, file = Path(path), _report_file(path)
    try:
        report = json.loads(file.read_text())
    except (OSError, ValueError):
        report = None
    if not isinstance(report, dict) or report.get("kind") != "arena":
        raise RewindError(f"--include {path}: not an arena report (no {JSON} of kind arena there)")
    if not _same_base(report["base"], base):
        raise RewindError(f"--include {path}: its base is {report['base']}, not {models.hub_id(base)}")
    if set(report["diagnostics"]) != set(diagnostics):
        raise RewindError(
            f"--include {path}: its diagnostics are {','.join(report['diagnostics']) or 'none'}, not "
            f"{','.join(diagnostics) or 'none'}: pass --diagnostics {','.join(report['diagnostics'])}"
        )
    note = None
    if DATA_DRIVEN & set(diagnostics):  # spectral reads no data: the probe cannot matter to it
        if "probe" not in report:
            note = f"{file} did not record its probe settings: they are assumed to match this run's"
        else:
            mine, theirs = _settings(asdict(probe)), _settings(report["probe"])
            differ = [
                f"--{k.replace('_', '-')} {theirs[k]} (this run: {mine[k]})" for k in PROBE_KEYS if theirs[k] != mine[k]
            ]
            if differ:
                raise RewindError(f"--include {path}: its probe differs: {'; '.join(differ)}")
    # A row included before keeps its "from": that report's dir holds the row's per-adapter diagnostics.
    return [{**row, "from": row.get("from") or str(file)} for row in report["adapters"]], note


def _report_file(path: str | Path) -> Path:
    return Path(path) / JSON if Path(path).is_dir() else Path(path)


def _settings(probe: dict) -> dict:
    # The order of --data only orders the columns.
    return {**probe, "data": ",".join(sorted(probe["data"]))}


def run(
    adapter_dirs: list[str | Path],
    base,
    out: str | Path,
    sweeps: list[str | Path] | None = None,
    sweeps_root: str | Path = ".",
    diagnostics: tuple[str, ...] = DIAGNOSTICS,
    probe: Probe = Probe(),
    device: str | None = None,
    dtype: str = "auto",
    plots: bool = True,
    include: list[str | Path] = (),
) -> dict:
    """Scores, diagnostics and correlations for `adapter_dirs` and the rows of the arena reports in `include`;
    writes JSON, CSVs, Markdown and a PNG to `out`."""
    out = Path(out)
    _check_inputs(adapter_dirs, sweeps, diagnostics, probe, include)
    old, notes = [], []
    for path in include:
        rows, note = included(path, base, diagnostics, probe)
        old += rows
        notes += [f"the rows from {path} are as recorded there (scores and diagnostics not recomputed)"]
        notes += [note] if note else []
    sweep_dirs = [Path(s) for s in sweeps] if sweeps else [find_sweep(a, sweeps_root) for a in adapter_dirs]
    new = [{"adapter": str(a), **scores(s, base)} for a, s in zip(adapter_dirs, sweep_dirs)]
    rows = old + new
    for row, name in zip(rows, _unique([r["name"] for r in old] + [Path(a).resolve().name for a in adapter_dirs])):
        row["name"] = name
    resident = None
    for row in Bar(new, desc="arena", unit="adapter", leave=False):
        resident = _diagnose(row, base, out, diagnostics, probe, device, dtype, resident)
    # Over all rows: a report that did not record its probe may have probed other data (other columns).
    columns = list(dict.fromkeys(c for r in rows for c in r if "." in c))
    correlations = {c: correlate([r.get(c) for r in rows], [r["forgetting"] for r in rows]) for c in columns}
    out.mkdir(parents=True, exist_ok=True)  # before the plot: with only included rows nothing made it yet
    report = {
        "kind": "arena",
        "base": models.hub_id(base),
        "diagnostics": list(diagnostics),
        "probe": {**asdict(probe), "data": list(probe.data)},
        "adapters": rows,
        "correlations": correlations,
        "notes": notes + _caveats(rows),
        "plots": [plot(rows, correlations, out / PLOT)] if plots and columns else [],
    }
    write_json(out / JSON, report)
    _write_csv(out / TABLE, rows)
    _write_csv(out / CORRELATIONS, [{"diagnostic": c, **v} for c, v in correlations.items()])
    (out / MARKDOWN).write_text(markdown(report))
    return report


def _check_inputs(adapter_dirs, sweeps, diagnostics, probe: Probe, include) -> None:
    """Refuse what cannot make an arena before anything is computed."""
    if not adapter_dirs and not include:
        raise RewindError("rewind arena needs at least one adapter or --include")
    if sweeps and len(sweeps) != len(adapter_dirs):
        raise RewindError(
            f"--sweep given {len(sweeps)} times for {len(adapter_dirs)} adapters: give one per adapter, "
            f"in the same order, or none to find them"
        )
    unknown = set(diagnostics) - set(DIAGNOSTICS)
    if unknown:
        raise RewindError(f"--diagnostics {','.join(sorted(unknown))}: choose from {', '.join(DIAGNOSTICS)}")
    if DATA_DRIVEN & set(diagnostics):
        probe.suites()  # a bad --data or --split fails before anything is computed
    files = [str(_report_file(p).resolve()) for p in include]
    twice = {f for f in files if files.count(f) > 1}
    if twice:  # its rows would count twice in every correlation
        raise RewindError(f"--include {', '.join(sorted(twice))} given twice")


def _diagnose(row: dict, base, out: Path, diagnostics, probe: Probe, device, dtype, resident):
    """Run the diagnostics of one adapter's row into out/<name>/ and add their scalars to the row. Returns the
    resident base model the data-driven ones share (loaded at the first that needs it)."""
    if DATA_DRIVEN & set(diagnostics):  # the precision the probe ran in: rows of other runs may differ
        row["dtype"] = models.resolve_dtype(dtype, device)
    finetune = Finetune(row["adapter"], base)
    directory = out / safe_name(row["name"])
    update = plan_report(finetune, directory).update
    row.update(method=update.method.name, trainable_params=trainable_params(update))
    for kind in diagnostics:
        if kind == "spectral":
            report = spectral.run(finetune, directory / kind, device=device, plots=False)
        else:
            resident = resident or models.load_base(base, device, dtype)
            runner = csd.run if kind == "csd" else activations.run
            report = runner(
                finetune, directory / kind, probe, device=device, dtype=dtype, resident=resident, plots=False
            )
        row.update(scalars(report))
    return resident


def _caveats(rows: list[dict]) -> list[str]:
    """What a reader of the correlations must know about the rows behind them."""
    notes = []
    if len({r["suites"] for r in rows}) > 1:
        notes.append("the sweeps differ in suites or limit: their scores are not directly comparable")
    if len({r["split"] for r in rows}) > 1:
        notes.append("some sweeps are scored on validation, others on test")
    if len(rows) < 3:
        notes.append("correlations need 3 or more adapters")
    precisions = {r["dtype"] for r in rows if r.get("dtype")}
    if len(precisions) > 1:
        notes.append(
            f"the rows' csd and activation values were computed in {' and '.join(sorted(precisions))} "
            f"(column dtype): they differ by that rounding too"
        )
    return notes


def _unique(names: list[str]) -> list[str]:
    """Each name once: a repeat gets its position as a suffix (lora, ia3, lora-3)."""
    out = []
    for name in names:
        unique, n = name, len(out) + 1
        while unique in out:
            unique, n = f"{name}-{n}", n + 1
        out.append(unique)
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in fields} for r in rows)


def _num(v, fmt: str = ".2f") -> str:
    return "n/a" if not _defined(v) else format(v, fmt)


def markdown(report: dict) -> str:
    rows = report["adapters"]
    lines = [
        f"# rewind arena: {report['base']}",
        "",
        "Scores from each adapter's sweep: the finetune (alpha = 1) against the sweep's base point, on the split "
        "named; forgetting = base general - finetune general (points, > 0 = lost). *rewound* is the sweep's "
        "selected point.",
        "",
        "| adapter | method | trainable params | split | target | general | Δ target | Δ general | forgetting "
        "| rewound: point, target, general |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['method']} | {r['trainable_params']:,} | {r['split']} | {_num(r['target'])} "
            f"| {_num(r['general'])} | {_num(r['d_target'], '+.2f')} | {_num(r['d_general'], '+.2f')} "
            f"| {_num(r['forgetting'], '+.2f')} | {r['selected']}, {_num(r['selected_target'])}, "
            f"{_num(r['selected_general'])} |"
        )
    if report["correlations"]:
        lines += [
            "",
            f"## Diagnostics vs forgetting ({len(rows)} adapters)",
            "",
            "| diagnostic | n | Pearson r | p | Spearman ρ | p |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, c in report["correlations"].items():
            lines.append(
                f"| {name} | {c['n']} | {_num(c['pearson_r'], '+.3f')} | {_num(c['pearson_p'], '.3g')} "
                f"| {_num(c['spearman_rho'], '+.3f')} | {_num(c['spearman_p'], '.3g')} |"
            )
        lines += [
            "",
            "## Diagnostic values",
            "",
            "| diagnostic | " + " | ".join(r["name"] for r in rows) + " |",
            "| --- |" + " ---: |" * len(rows),
        ]
        for name in report["correlations"]:
            lines.append(f"| {name} | " + " | ".join(_num(r.get(name), ".4g") for r in rows) + " |")
    if report["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], correlations: dict, path: Path) -> str:
    """arena.png: forgetting against each diagnostic, one point per adapter, r and rho in the titles."""
    plt = pyplot()
    names = list(correlations)
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.0 * nrows), dpi=110, squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = [
            (r.get(name), r["forgetting"], r["name"])
            for r in rows
            if _defined(r.get(name)) and _defined(r["forgetting"])
        ]
        for x, y, label in points:
            ax.plot(x, y, "o", ms=5)
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        c = correlations[name]
        ax.set_title(f"{name}\nr={_num(c['pearson_r'], '+.2f')}  rho={_num(c['spearman_rho'], '+.2f')}", fontsize=7)
        ax.set_ylabel("forgetting (points)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name
