"""Behaviour unchanged: every saved sweep of the study reports what it reported before (tests/data, see
tests/study_selections.py): the same selection under each rule, scores, summary, table and search choices."""

from __future__ import annotations

import json

import pytest
import study_selections

RECORDED = json.loads(study_selections.DATA.read_text())


def test_every_study_sweep_is_recorded():
    assert sorted(RECORDED) == sorted(d.name for d in study_selections.SWEEPS.iterdir() if d.is_dir())


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_study_sweep_reports_what_it_did(name):
    now = json.loads(json.dumps(study_selections.record(study_selections.SWEEPS / name)))  # tuples as JSON has them
    before = RECORDED[name]
    assert now["rules"] == before["rules"]
    assert now["summary"] == before["summary"]  # exact: the same sums in the same order
    assert now["table"] == before["table"]
    assert now.get("search") == before.get("search")
