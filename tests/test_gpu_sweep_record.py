"""The H200 sweeps with per-item scores (docs/study/sweeps-256/*) report offline what they reported on the GPU:
selection, verdict, evidence, noise floor and every interval, from results.jsonl and items.jsonl alone. Floats
match to rounding (the GPU box's numpy summed in another order)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rewind.report import Report

SWEEPS = Path(__file__).resolve().parents[1] / "docs" / "study" / "sweeps-256"


def _close(now, saved, where: str = "") -> None:
    if isinstance(saved, float):
        assert now == pytest.approx(saved, rel=1e-9, abs=1e-12), where
    elif isinstance(saved, dict):
        assert sorted(now) == sorted(saved), where
        for key in saved:
            _close(now[key], saved[key], f"{where}.{key}")
    elif isinstance(saved, list):
        assert len(now) == len(saved), where
        for i, (a, b) in enumerate(zip(now, saved)):
            _close(a, b, f"{where}[{i}]")
    else:
        assert now == saved, where


@pytest.mark.parametrize("name", sorted(d.name for d in SWEEPS.iterdir() if d.is_dir()))
def test_gpu_sweep_reports_its_summary(name, tmp_path):
    copy = tmp_path / name
    shutil.copytree(SWEEPS / name, copy)  # reading a log may repair it: never the shipped files
    now = json.loads(json.dumps(Report.read(copy).summary()))
    saved = json.loads((SWEEPS / name / "summary.json").read_text())
    assert saved["verdict"] and saved["evidence"] and "noise_floor" in saved  # the GPU wrote intervals
    # the same decision; the reason in brackets may be worded since (the numbers before it may not)
    assert now.pop("verdict").split(" (")[0] == saved.pop("verdict").split(" (")[0]
    _close(now, saved)
