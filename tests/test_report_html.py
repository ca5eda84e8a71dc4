"""`rewind report` (rewind.report_html): the HTML page of a sweep dir, on the recorded study and GPU sweeps and on
a tiny search that writes its own page; the export command it prints; intervals; a 200-point sweep; bad input."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import tinysweep

from rewind import report_html as html
from rewind.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs"
STUDY, GPU_DEMO = DOCS / "study" / "sweeps", DOCS / "demo-oft-gpu"
RECORDED = sorted(p for p in STUDY.iterdir() if (p / "summary.json").is_file()) + [GPU_DEMO]


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as code:
        main(args)
    return code.value.code


def _rows(page: str, section: str) -> dict[str, list[str]]:
    """{first cell: the other cells' text} of a section's table body rows."""
    body = page.split(f'id="{section}"', 1)[1].split("</section>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body):
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("sweep_dir", RECORDED, ids=lambda p: p.name)
def test_every_recorded_sweep_renders_a_self_contained_page(sweep_dir, tmp_path):
    page = html.write(sweep_dir, tmp_path / "r.html").read_text()
    for ident in ("verdict", "frontier", "alpha", "tasks", "points"):
        assert f'id="{ident}"' in page
    assert page.count("<svg") == 2 + page.count('id="trajectory"')
    # Nothing to fetch: every src/href is inline data or a fragment (the SVGs' own markers and clip paths); no
    # script, stylesheet link, or CSS url() but to a fragment.
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert all(ref.startswith(("data:", "#")) for ref in refs), [r[:60] for r in refs if not r.startswith("data:")]
    assert not re.search(r"<script|<link|@import|url\((?!#)", page)


def test_the_gpu_demo_page_shows_the_overshoot_and_the_selected_point(tmp_path):
    page = html.write(GPU_DEMO, tmp_path / "r.html").read_text()
    summary = json.loads((GPU_DEMO / "summary.json").read_text())
    base, final, sel = summary["base_point"], summary["final_point"], summary["selected"]
    verdict = re.sub(r"<[^>]+>", "", page.split('id="verdict"', 1)[1].split("</section>", 1)[0])
    assert f"It overshoots: the finetune costs {base['general'] - final['general']:.2f} general points" in verdict
    assert f"Selected: cayley α=0.5: target {sel['target']:.2f}" in verdict
    gain = 100 * (sel["target"] - base["target"]) / (final["target"] - base["target"])
    assert f"keeping {gain:.0f} % of the final's target gain" in verdict
    points = _rows(page, "points")
    assert len(points) == len(summary["points"])
    assert "selected" in points["cayley α=0.5"][-2] and "frontier" in points["final"][-2]


def test_the_task_table_holds_each_tasks_scores_from_results_jsonl(tmp_path):
    page = html.write(GPU_DEMO, tmp_path / "r.html").read_text()
    summary = json.loads((GPU_DEMO / "summary.json").read_text())
    records = [json.loads(line) for line in (GPU_DEMO / "results.jsonl").read_text().splitlines()]
    rows = _rows(page, "tasks")
    keys = [summary["base_point"]["key"], summary["final_point"]["key"], summary["selected"]["key"]]
    for r in records:
        if r["point"] in keys and r["role"] != "pass@k":
            # cells: n, then base, final, delta, selected, delta for validation, then the same for test
            column = {0: 1, 1: 2, 2: 4}[keys.index(r["point"])] + (5 if r["split"] == "test" else 0)
            assert rows[r["task"]][column] == f"{r['score']:.2f}", (r["task"], r["point"], r["split"])
    loss = summary["final_point"]["general"] - summary["base_point"]["general"]
    assert rows["general (sweep score)"][3] == f"{loss:+.2f}"


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny sweep with a per-layer search: both write report.html themselves."""
    root = tmp_path_factory.mktemp("report")
    base, adapter = tinysweep.make(root, layers=2)
    out = root / "sweep"
    args = tinysweep.sweep_args(base, adapter, out, "--alphas", "0,0.5,1")
    assert _cli(["search", *args[1:], "--groups", "layer", "--budget", "2", "--objective", "max-sum"]) == 0
    return out


def test_a_search_writes_its_page_with_the_searched_points(searched):
    page = (searched / html.REPORT_FILE).read_text()
    assert 'id="search"' in page and "per-layer search (" in page
    summary = json.loads((searched / "summary.json").read_text())
    assert len(_rows(page, "points")) == len(summary["points"]) >= 4


def test_the_printed_export_commands_plan_the_selected_point(searched, tmp_path, capsys):
    loaded = html.load(searched)
    commands = [c for c in html.export_commands(loaded, str(tmp_path / "x")) if not c.startswith("#")]
    assert len(commands) == 2
    plans = []
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["rewind", "export"]
        capsys.readouterr()
        assert _cli([*argv[1:], "--dry-run"]) == 0
        plans.append(capsys.readouterr().out.splitlines()[0])
    sel = loaded.summary["selected"]
    alpha = {"base": 0, "final": 1}.get(sel["path"], sel["alpha"])
    assert plans[0] == plans[1] and f"(alpha={alpha:g}" in plans[0]


def test_intervals_show_as_bars_and_a_column(tmp_path):
    sweep_dir = tmp_path / "ci"
    shutil.copytree(GPU_DEMO, sweep_dir)
    summary = json.loads((sweep_dir / "summary.json").read_text())
    for p in summary["points"]:
        p["target_ci"] = [p["target"] - 2.5, p["target"] + 3.0]
        p["general_ci"] = 1.25
    (sweep_dir / "summary.json").write_text(json.dumps(summary))
    page = html.write(sweep_dir).read_text()
    cayley = _rows(page, "points")["cayley α=0.5"]
    assert cayley[4:6] == [
        f"{summary['points'][6]['target'] - 2.5:.2f}–{summary['points'][6]['target'] + 3:.2f}",
        "±1.25",
    ]
    plain = html.write(GPU_DEMO, tmp_path / "plain.html").read_text()
    frontier = lambda text: text.split('id="frontier"', 1)[1].split("</svg>", 1)[0]  # noqa: E731
    assert frontier(page).count("<path") >= frontier(plain).count("<path") + 2 * len(summary["points"])


def test_a_200_point_sweep_stays_readable(tmp_path):
    """Alpha labels give way to lines and the point table folds; the verdict and task table stay on top."""
    sweep_dir = tmp_path / "big"
    shutil.copytree(GPU_DEMO, sweep_dir)
    summary = json.loads((sweep_dir / "summary.json").read_text())
    paths = [f"p{i}" for i in range(10)]
    summary["paths"] = paths
    summary["points"] = summary["points"][:2] + [
        {
            "key": f"{p}@{a / 21:g}",
            "path": p,
            "alpha": a / 21,
            "layers": None,
            "target": 5 + 12 * a / 21 + i,
            "general": 30 - 5 * (a / 21) ** 2 - i / 3,
            "seconds": 1.0,
        }
        for i, p in enumerate(paths)
        for a in range(1, 21)
    ]
    summary["points"] = summary["points"][:200]
    (sweep_dir / "summary.json").write_text(json.dumps(summary))
    page = html.write(sweep_dir).read_text()
    assert len(_rows(page, "points")) == 200
    assert "<details open>" not in page.split('id="points"', 1)[1]
    frontier = page.split('id="frontier"', 1)[1].split("</svg>", 1)[0]
    assert frontier.count("<text") < 60  # axes, ticks and legend; no 190 alpha labels


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(GPU_DEMO / "sweep.json", unfinished)
    cases = [
        ([str(tmp_path / "absent")], "no sweep in"),
        ([str(unfinished)], "has no summary.json yet"),
        ([str(GPU_DEMO), "--out", str(GPU_DEMO / "summary.json")], "is one of the report's inputs"),
        ([str(GPU_DEMO), "--out", str(tmp_path)], "is a dir"),
        ([str(GPU_DEMO), "--attach", str(unfinished)], "not a diagnostics or arena dir"),
    ]
    before = {p: p.stat().st_mtime_ns for p in GPU_DEMO.iterdir()}
    for args, message in cases:
        assert _cli(["report", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert {p: p.stat().st_mtime_ns for p in GPU_DEMO.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unfinished"]
    assert sorted(p.name for p in unfinished.iterdir()) == ["sweep.json"]


def test_the_cli_writes_beside_the_sweep_by_default(tmp_path, capsys):
    sweep_dir = tmp_path / "s"
    shutil.copytree(GPU_DEMO, sweep_dir, ignore=shutil.ignore_patterns(html.REPORT_FILE))
    assert _cli(["report", str(sweep_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {sweep_dir / html.REPORT_FILE}"
    assert (sweep_dir / html.REPORT_FILE).read_text().startswith("<!DOCTYPE html>")
