"""The HTML report in a real browser (headless Chromium, Debian's `chromium` package; .ci/run installs it): it loads
with no console errors and no request beyond the file itself and its inline data, the plots and tables are there,
and a full-page screenshot is kept as a test artifact (listed at the end of the run)."""

from __future__ import annotations

from pathlib import Path

import browser
import pytest

from rewind import report_html

DOCS = Path(__file__).resolve().parents[1] / "docs"
STUDY = DOCS / "study"
CASES = {  # name: (sweep dir, attached dirs)
    "demo-oft-gpu": (DOCS / "demo-oft-gpu", []),
    "study-oft": (STUDY / "sweeps" / "oft", [STUDY / "diagnostics" / "oft", STUDY / "arena"]),
    "study-lora": (STUDY / "sweeps" / "lora", []),  # training checkpoints and a search
    "study-dora": (STUDY / "sweeps" / "dora", []),  # two points: base and final
}

pytestmark = pytest.mark.skipif(browser.chromium() is None, reason="no Chromium (apt-get install chromium)")


@pytest.mark.parametrize("name", CASES)
def test_the_report_loads_offline_with_its_plots_and_tables(name, tmp_path, keep_artifact):
    sweep_dir, attached = CASES[name]
    page = report_html.write(sweep_dir, tmp_path / "report.html", attached)
    visit = browser.visit(page)
    shot = keep_artifact(f"report-{name}.png", visit.screenshot)
    assert visit.errors == [], shot
    assert visit.requests[0] == page.resolve().as_uri()
    assert [url[:40] for url in visit.requests[1:] if not url.startswith("data:image/png;base64,")] == []
    facts = visit.facts
    loaded = report_html.load(sweep_dir, attached)
    trajectory = any(p["path"] == "train" for p in loaded.points)
    assert facts["svgs"] == (3 if trajectory else 2)
    assert min(facts["svg_marks"]) > 20  # drawn plots, not empty frames
    assert facts["images"] == facts["images_decoded"] == sum(len(list(d.glob("*.png"))) for d in attached)
    tasks = {(r["role"], r["task"]) for r in loaded.records if r["role"] in ("target", "general")}
    assert facts["task_rows"] == len(tasks) + len({role for role, _ in tasks})  # one row per task and per role
    assert {"verdict", "frontier", "alpha", "tasks", "points"} <= set(facts["sections"])
    assert ("search" in facts["sections"]) == (loaded.search is not None)
    assert facts["export_command"].startswith(f"rewind export --from {sweep_dir} --out ")
    assert facts["height"] > 1500  # laid out, not collapsed


def test_the_checks_see_a_request_and_a_console_error(tmp_path):
    """The browser checks can fail: a page that fetches and logs an error is caught doing both."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
        "<script>console.error('boom')</script></body></html>"
    )
    visit = browser.visit(page)
    assert "http://127.0.0.1:9/x.png" in visit.requests
    assert "console.error: boom" in visit.errors
