"""`rewind report`: one self-contained HTML page for a sweep dir (the frontier, scores against alpha, the per-task
table, the selection and its export command, diagnostics and arena plots).

Self-contained means it opens offline and fetches nothing: plots are inline SVG (matplotlib, text kept as text),
other images PNG data URIs, the style inline, no script. The same page reads for a 3-point CPU sweep and a
200-point study: alpha labels and per-point rows give way to the lines and a folded table once there are many.
"""

from __future__ import annotations

import base64
import html
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from . import report_plots as plots
from .errors import RewindError
from .report import SUMMARY_FILE
from .results import RESULTS_FILE, SEARCH_FILE, SWEEP_FILE, TEST, VALIDATION, ResultsLog, compact, search_rows

REPORT_FILE = "report.html"
ATTACHED_JSON = ("arena.json", "spectral.json", "csd.json", "activations.json")  # what marks a diagnostics dir
OPEN_ROWS = 30  # the all-points table starts unfolded up to this many rows


@dataclass
class Page:
    """What a sweep dir holds, read once."""

    dir: Path
    record: dict  # sweep.json
    summary: dict  # summary.json
    records: list[dict]  # results.jsonl lines of the summary's run
    search: dict | None = None
    attached: list[Path] = field(default_factory=list)  # diagnostics / arena dirs whose plots join the page

    @property
    def points(self) -> list[dict]:
        return self.summary["points"]

    @property
    def tolerance(self) -> float:
        return float(self.summary.get("tolerance", 1.0))


def load(sweep_dir: str | Path, attach: list[str | Path] = ()) -> Page:
    """Read a finished sweep dir (its summary.json must exist) and the dirs to attach."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / SWEEP_FILE).is_file():
        raise RewindError(f"no sweep in {sweep_dir} (no {SWEEP_FILE}): give a sweep dir")
    if not (sweep_dir / SUMMARY_FILE).is_file():
        raise RewindError(
            f"the sweep in {sweep_dir} has no {SUMMARY_FILE} yet: finish it (rerun the same "
            f"`rewind sweep` command) before reporting"
        )
    summary = files.read_json(sweep_dir / SUMMARY_FILE, "sweep summary")
    records = ResultsLog(sweep_dir / RESULTS_FILE, repair=False).records(summary["run"])
    search = files.read_json(sweep_dir / SEARCH_FILE, "search record") if (sweep_dir / SEARCH_FILE).is_file() else None
    dirs = []
    for d in map(Path, attach):
        if not d.is_dir() or not any((d / name).is_file() for name in ATTACHED_JSON):
            raise RewindError(f"--attach {d}: not a diagnostics or arena dir (none of {', '.join(ATTACHED_JSON)})")
        dirs.append(d)
    return Page(
        sweep_dir,
        files.read_json(sweep_dir / SWEEP_FILE, "sweep record"),
        summary,
        records,
        search,
        discover(sweep_dir) + dirs,
    )


def discover(sweep_dir: Path) -> list[Path]:
    """Diagnostics or arena outputs beside the sweep: in its dir or a direct subdir."""
    candidates = [sweep_dir, *sorted(p for p in sweep_dir.iterdir() if p.is_dir())]
    return [d for d in candidates if any((d / name).is_file() for name in ATTACHED_JSON)]


def write(sweep_dir: str | Path, out: str | Path | None = None, attach: list[str | Path] = ()) -> Path:
    """Render the report of `sweep_dir` to `out` (default: report.html in the sweep dir), written whole."""
    report = load(sweep_dir, attach)
    out = Path(out) if out is not None else Path(sweep_dir) / REPORT_FILE
    _check_out(out, report)
    page = render(report)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RewindError(f"--out {out}: cannot create its dir ({exc.strerror})") from exc
    files.write_atomic(out, page)
    return out


def _check_out(out: Path, report: Page) -> None:
    if out.is_dir():
        raise RewindError(f"--out {out} is a dir: give the HTML file to write, e.g. {out / REPORT_FILE}")
    read = [report.dir / name for name in (SWEEP_FILE, SUMMARY_FILE, RESULTS_FILE, SEARCH_FILE)]
    read += [p for d in report.attached for p in d.iterdir()]
    if any(out.resolve() == p.resolve() for p in read if p.exists()):
        raise RewindError(f"--out {out} is one of the report's inputs: rewind never writes over its inputs")


# -- the page ---------------------------------------------------------------------------------------------------
def render(report: Page) -> str:

    s = report.summary
    title = f"rewind: {s['method']} on {s['base']}"
    sections = [
        f"<h1>{_e(title)}</h1>",
        _facts(report),
        _verdict(report),
        _figure(
            "Frontier: target vs general (validation)",
            plots.frontier(report.summary),
            "frontier",
            "Each path runs from the base (α = 0) to the final adapter (α = 1). Larger target and general "
            "are both better; squares mark the Pareto frontier, the red ring the selected point.",
        ),
        _figure(
            "Target and general against α",
            plots.against_alpha(report.summary),
            "alpha",
            "One line per path; the dotted line is the lowest general score the rule accepts."
            if s["rule"] == "max-target-within"
            else "One line per path.",
        ),
    ]
    trajectory = plots.trajectory(report.summary)
    if trajectory:
        sections.append(
            _figure("Training trajectory", trajectory, "trajectory", "Checkpoints of the training run, by step.")
        )
    sections += [_task_table(report), _search(report), _points_table(report), _attachments(report)]
    body = "\n".join(part for part in sections if part)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{_e(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _facts(report: Page) -> str:
    s, spec = report.summary, report.record.get("spec", {})
    suites = lambda names: ", ".join(names or [])  # noqa: E731
    rows = [
        ("adapter", s["adapter"]),
        ("method", f"{s['method']} (natural path: {report.record.get('natural_path')})"),
        ("paths", ", ".join(s["paths"])),
        ("target suites", suites(spec.get("target"))),
        ("general suites", suites(spec.get("general"))),
        ("items per task", spec.get("limit") or "all"),
        ("points", len(report.points)),
        ("dtype", spec.get("dtype", "")),
        ("run", s["run"]),
        ("sweep dir", report.dir),
    ]
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="facts">{cells}</table>'


def _figure(title: str, svg: str, ident: str, caption: str) -> str:
    return (
        f'<section id="{ident}"><h2>{_e(title)}</h2><figure class="plot">{svg}'
        f"<figcaption>{_e(caption)}</figcaption></figure></section>"
    )


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2125;background:#fafafa;margin:0}
main{max-width:1120px;margin:0 auto;padding:24px 28px 64px}
h1{font-size:24px;margin:8px 0 12px}
h2{font-size:19px;margin:30px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #e6e6e6;white-space:nowrap}
th:first-child,td:first-child,.l{text-align:left}th[colspan]{text-align:center}
thead th{background:#f0f2f4}
table.facts th{text-align:left;color:#555;font-weight:500}table.facts td{text-align:left;white-space:normal}
.verdict{background:#fff;border:1px solid #d5dbe1;border-left:5px solid #2f6fde;padding:12px 16px;border-radius:4px}
.verdict p{margin:6px 0}.pos{color:#17803d}.neg{color:#c0322b}.muted{color:#777}
pre{background:#1f2328;color:#e6edf3;padding:10px 14px;border-radius:4px;white-space:pre-wrap;overflow-wrap:anywhere;
font-size:13px}
figure.plot{margin:0;background:#fff;border:1px solid #e3e3e3;border-radius:4px;padding:8px}
figure.plot svg,figure.plot img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#555;font-size:13px;margin:4px 6px}
tr.sel td{background:#fff4e5}tr.group td{background:#f4f6f8;font-weight:600}
details summary{cursor:pointer;color:#2f6fde;margin:6px 0}
#attached figure{margin-bottom:12px}
"""


# -- verdict, selection, export -----------------------------------------------------------------------------------
def point_name(row: dict) -> str:
    """cayley α=0.5, base, final, train step 250, or a searched schedule."""
    if row["path"] in ("base", "final"):
        return row["path"]
    if row["path"] == "train":
        return f"training checkpoint {row['alpha']:g}"
    layers = f" per-layer [{compact(row['layers'])}]" if row.get("layers") else ""
    return f"{row['path']} α={row['alpha']:g}{layers}"


def rule_text(summary: dict) -> str:
    rule, base = summary["rule"], summary["base_point"]
    if rule == "max-target-within":
        tol = float(summary.get("tolerance", 1.0))
        return (
            f"max-target-within: the highest target score among the points whose general score stays within "
            f"{tol:g} of the base's ({base['general']:.2f} − {tol:g} = {base['general'] - tol:.2f}), "
            f"on the validation split"
        )
    return {
        "knee": "knee: the frontier point where trading general for target stops paying (farthest from the "
        "chord joining the frontier's ends), on the validation split",
        "max-sum": "max-sum: the highest target + general, on the validation split",
        "weighted": "weighted: the highest weighted sum of target and general, on the validation split",
    }.get(rule, rule)


def _signed(value: float, digits: int = 2) -> str:
    css = "pos" if value > 0 else "neg" if value < 0 else "muted"
    return f'<span class="{css}">{value:+.{digits}f}</span>'


def _verdict(report: Page) -> str:
    s = report.summary
    base, final, sel = s["base_point"], s["final_point"], s["selected"]
    gain, loss = final["target"] - base["target"], final["general"] - base["general"]
    lines = [
        f"<p><b>Final adapter</b>: target {final['target']:.2f} ({_signed(gain)}), general "
        f"{final['general']:.2f} ({_signed(loss)}) against the base's {base['target']:.2f} / "
        f"{base['general']:.2f}.{_overshoot(s)}</p>",
        f"<p><b>Selected: {_e(point_name(sel))}</b>: target {sel['target']:.2f} "
        f"({_signed(sel['target'] - base['target'])}), general {sel['general']:.2f} "
        f"({_signed(sel['general'] - base['general'])}){_kept(sel, base, gain)}.</p>",
        f'<p class="muted">Rule: {_e(rule_text(s))}.</p>',
    ]
    if s.get("verdict"):  # a sweep with per-item scores: the decision on paired intervals, with its numbers
        lines.append(f"<p>At {s['confidence']:g} confidence (paired bootstrap): {_e(s['verdict'])}</p>")
    tests = [(name, row.get("test")) for name, row in (("base", base), ("final", final), ("selected", sel))]
    if all(t for _, t in tests):
        lines.append(
            "<p>On the test split: "
            + "; ".join(f"{name} {t['target']:.2f} / {t['general']:.2f}" for name, t in tests)
            + " (target / general).</p>"
        )
    commands = export_commands(report)
    return (
        '<section id="verdict"><h2>Verdict</h2><div class="verdict">'
        + "".join(lines)
        + "<p>Export the selected point:</p><pre>"
        + _e("\n".join(commands))
        + "</pre></div></section>"
    )


def _overshoot(summary: dict) -> str:
    base, final = summary["base_point"], summary["final_point"]
    drop = base["general"] - final["general"]
    if summary["rule"] == "max-target-within" and drop > float(summary.get("tolerance", 1.0)):
        return f" It overshoots: the finetune costs {drop:.2f} general points."
    return ""


def _kept(sel: dict, base: dict, gain: float) -> str:
    if sel["path"] in ("base", "final") or gain <= 0:
        return ""
    return f", keeping {100 * (sel['target'] - base['target']) / gain:.0f} % of the final's target gain"


def export_commands(report: Page, out: str = "rewind-export") -> list[str]:
    """The `rewind export` command that writes the selected point: from the sweep dir, and spelled out."""
    s, spec, sel = report.summary, report.record.get("spec", {}), report.summary["selected"]
    q = shlex.quote
    base = f" --base {q(str(spec['base']))}" if spec.get("base") else ""
    if sel["path"] == "train":
        return [
            f"rewind export{base} --adapter <checkpoint-{sel['alpha']:g} of {q(str(spec.get('checkpoints')))}> "
            f"--alpha 1 --out {out}"
        ]
    alpha = {"base": 0.0, "final": 1.0}.get(sel["path"], sel["alpha"])
    path = sel["path"] if sel["path"] not in ("base", "final") else s["paths"][0]
    explicit = (
        f"rewind export{base} --adapter {q(str(spec.get('adapter', s['adapter'])))} --path {path} --alpha {alpha:g}"
    )
    layers = sel.get("layers") or (None if sel["path"] in ("base", "final") else spec.get("layers"))
    if layers:
        explicit += f" --layers {q(layers if isinstance(layers, str) else ','.join(f'{v:g}' for v in layers))}"
    if spec.get("cayley_scale", "linear") != "linear":
        explicit += f" --cayley-scale {spec['cayley_scale']}"
    if spec.get("init_adapter"):
        explicit += f" --init-adapter {q(str(spec['init_adapter']))}"
    return [
        f"rewind export --from {q(str(report.dir))} --out {out}",
        "# the same point, spelled out:",
        f"{explicit} --out {out}",
    ]


# -- tables -----------------------------------------------------------------------------------------------------
def task_scores(records: list[dict], split: str) -> dict[tuple[str, str], dict[str, dict]]:
    """{(role, task): {point key: record}} for one split."""
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for r in records:
        if r["split"] == split and r["role"] in ("target", "general"):
            out.setdefault((r["role"], r["task"]), {})[r["point"]] = r
    return out


def _task_table(report: Page) -> str:
    s = report.summary
    keys = [("base", s["base_point"]["key"]), ("final", s["final_point"]["key"]), ("selected", s["selected"]["key"])]
    splits = {split: task_scores(report.records, split) for split in (VALIDATION, TEST)}
    tasks = sorted(set(splits[VALIDATION]) | set(splits[TEST]), key=lambda rt: (rt[0] != "target", rt[1]))
    if not tasks:
        return ""
    head = (
        "<thead><tr><th rowspan=2>task</th><th rowspan=2>n</th><th colspan=5>validation</th>"
        "<th colspan=5>test</th></tr><tr>"
        + "<th>base</th><th>final</th><th>Δ</th><th>selected</th><th>Δ</th>" * 2
        + "</tr></thead>"
    )
    rows, role = [], None
    for task in tasks:
        if task[0] != role:
            role = task[0]
            rows.append(_role_row(s, role))
        cells = "".join(_task_cells(splits[split].get(task, {}), keys) for split in (VALIDATION, TEST))
        n = next((r["n"] for split in (VALIDATION, TEST) for r in splits[split].get(task, {}).values()), "")
        rows.append(f"<tr><td>{_e(task[1])}</td><td>{_e(n)}</td>{cells}</tr>")
    return (
        '<section id="tasks"><h2>Per task: base, final and selected</h2>'
        f"<p>Scores 0–100, higher is better (perplexity tasks are scored so that higher is better too); Δ against "
        f"the base. Selected: {_e(point_name(s['selected']))}. The role rows are the sweep's scores (the mean "
        f"over suites of each suite's mean task score).</p><table>{head}<tbody>{''.join(rows)}</tbody></table>"
        "</section>"
    )


def _task_cells(by_point: dict[str, dict], keys: list[tuple[str, str]]) -> str:
    score = {name: by_point[key]["score"] if key in by_point else None for name, key in keys}
    return "".join(_score_cells(score, name) for name in ("base", "final", "selected"))


def _score_cells(score: dict[str, float | None], name: str) -> str:
    value = score[name]
    text = f"<td>{value:.2f}</td>" if value is not None else '<td class="muted">—</td>'
    if name == "base":
        return text
    if value is None or score["base"] is None:
        return text + '<td class="muted">—</td>'
    return text + f"<td>{_signed(value - score['base'])}</td>"


def _role_row(summary: dict, role: str) -> str:
    cells = ""
    for split in (VALIDATION, TEST):
        rows = {
            name: summary[field] if split == VALIDATION else summary[field].get("test")
            for name, field in (("base", "base_point"), ("final", "final_point"), ("selected", "selected"))
        }
        score = {name: row[role] if row else None for name, row in rows.items()}
        cells += "".join(_score_cells(score, name) for name in ("base", "final", "selected"))
    return f'<tr class="group"><td>{role} (sweep score)</td><td></td>{cells}</tr>'


def _points_table(report: Page) -> str:
    s = report.summary
    base = s["base_point"]
    frontier, selected = set(s["frontier"]), s["selected"]["key"]
    rows = []
    for p in report.points:
        mark = ("frontier" if p["key"] in frontier else "") + (" · selected" if p["key"] == selected else "")
        ci = "".join(f"<td>{_e(_ci_text(p.get(f'{axis}_ci')))}</td>" for axis in ("target", "general"))
        deltas = f"<td>{_signed(p['target'] - base['target'])}</td><td>{_signed(p['general'] - base['general'])}</td>"
        rows.append(
            f"<tr{' class=sel' if p['key'] == selected else ''}><td>{_e(point_name(p))}</td>"
            f"<td>{p['target']:.2f}</td><td>{p['general']:.2f}</td>{deltas}"
            f"{ci if _has_ci(report) else ''}<td>{_e(mark)}</td><td>{p.get('seconds', 0):.1f}</td></tr>"
        )
    ci_head = "<th>target CI</th><th>general CI</th>" if _has_ci(report) else ""
    table = (
        f"<table><thead><tr><th>point</th><th>target</th><th>general</th><th>Δ target</th><th>Δ general</th>"
        f"{ci_head}<th></th><th>seconds</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    is_open = " open" if len(rows) <= OPEN_ROWS else ""
    return (
        f'<section id="points"><h2>All points (validation)</h2><details{is_open}><summary>{len(rows)} points '
        f"in sweep order</summary>{table}</details></section>"
    )


def _has_ci(report: Page) -> bool:
    return any(p.get("target_ci") is not None or p.get("general_ci") is not None for p in report.points)


def _ci_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return f"±{value:.2f}"
    return f"{value[0]:.2f}–{value[1]:.2f}"


def _search(report: Page) -> str:
    found = report.search
    if not found:
        return ""
    rows = []
    for name, row, test in search_rows(found):
        rows.append(
            f"<tr><td>{_e(name.replace('_', ' '))}</td><td class=l>{_e(point_name(row))}</td>"
            f"<td>{row['target']:.2f}</td><td>{row['general']:.2f}</td>"
            + "".join(
                f"<td>{test[k]:.2f}</td>" if k in test else '<td class="muted">—</td>' for k in ("target", "general")
            )
            + "</tr>"
        )
    return (
        f'<section id="search"><h2>Per-layer search</h2><p>{found["evaluations"]} validation evaluations on '
        f"{_e(found['path'])}, {len(found['groups'])} layer groups, starting from {_e(found['start'])} "
        f"(objective {_e(found['rule'])}). The searched points are the crosses in the frontier.</p>"
        "<table><thead><tr><th></th><th class=l>point</th><th>val target</th><th>val general</th>"
        f"<th>test target</th><th>test general</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


# -- attachments --------------------------------------------------------------------------------------------------
def _attachments(report: Page) -> str:
    parts = []
    for d in report.attached:
        images = sorted((p for p in d.glob("*.png") if p.name != "pareto.png"), key=lambda p: p.name)
        if not images:
            continue
        kinds = ", ".join(name.split(".")[0] for name in ATTACHED_JSON if (d / name).is_file())
        # Summaries in view; the per-module-type spectral plots (one per q, k, v, ...) folded below them.
        shown = [p for p in images if not re.fullmatch(r"spectral_(?!summary).*\.png", p.name)]
        folded = [p for p in images if p not in shown]
        more = (
            (
                f"<details><summary>{len(folded)} more: {_e(', '.join(p.stem for p in folded))}</summary>"
                f"{''.join(map(_image, folded))}</details>"
            )
            if folded
            else ""
        )
        parts.append(f"<h3>{_e(kinds)}: {_e(d)}</h3>{''.join(map(_image, shown))}{more}")
    if not parts:
        return ""
    return '<section id="attached"><h2>Diagnostics and arena</h2>' + "".join(parts) + "</section>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure class="plot"><img alt="{_e(path.name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(path.name)}</figcaption></figure>"
    )
