"""`rewind sweep --race` on a tiny model: chunks of items logged one line each, the budget kept, the survivors'
chunks joined into validation lines the report reads, and a rerun that takes every chunk from the log."""

from __future__ import annotations

import json

import pytest
import tinysweep

from rewind import items, racing, sweep
from rewind.cli import main
from rewind.errors import RewindError


def _spec(root, **kw):
    fields = dict(
        adapter=str(root / "tlora"),
        base=str(root / "tbase"),
        alphas=[0, 0.3, 0.6, 1],
        target=[tinysweep.TARGET],
        general=[tinysweep.GENERAL],
        limit=6,
        dtype="fp32",
        device="cpu",
        race=True,
        budget=30,
        chunk=2,
    )
    return sweep.SweepSpec(**{**fields, **kw})


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    root = tmp_path_factory.mktemp("race")
    tinysweep.make(root)
    summary = sweep.Sweep(_spec(root), root / "sweep").run(progress=False)
    return root, summary


def test_a_race_keeps_its_budget_and_logs_every_chunk(raced):
    root, summary = raced
    race = json.loads((root / "sweep" / racing.RACE_FILE).read_text())
    chunks = [line for line in tinysweep.read_jsonl(root / "sweep" / "items.jsonl") if line["split"] == items.RACE]
    assert race["spent"] == sum(len(line["doc"]) for line in chunks) <= 30
    given = [(p, e["task"], *e["items"]) for e in race["log"] if "task" in e for p in e["points"]]
    assert sorted(given) == sorted((c["point"], c["task"], *c["chunk"]) for c in chunks)  # each chunk once
    assert {"base@0", "final@1"} <= set(race["survivors"])
    assert {row["key"] for row in summary["points"]} == set(race["survivors"])


def test_survivors_are_scored_on_their_joined_chunks(raced):
    root, summary = raced
    logged = tinysweep.read_jsonl(root / "sweep" / "items.jsonl")
    results = [r for r in tinysweep.read_jsonl(root / "sweep" / "results.jsonl") if r["split"] == "validation"]
    for r in results:
        chunks = [c for c in logged if c["split"] == items.RACE and (c["point"], c["task"]) == (r["point"], r["task"])]
        assert r["raced"] and r["n"] == sum(len(c["doc"]) for c in chunks) > 2  # more than one round
        assert r["score"] == pytest.approx(100 * sum(sum(c["values"]) for c in chunks) / r["n"])
    assert all(row["target_ci"] is not None for row in summary["points"])
    tests = {r["point"] for r in tinysweep.read_jsonl(root / "sweep" / "results.jsonl") if r["split"] == "test"}
    assert tests == {"base@0", "final@1", summary["selected"]["key"]}


def test_a_rerun_race_takes_every_chunk_from_the_log(raced):
    root, summary = raced
    before = (root / "sweep" / "items.jsonl").read_text()
    again = sweep.Sweep(_spec(root), root / "sweep").run(progress=False)
    assert (root / "sweep" / "items.jsonl").read_text() == before  # nothing evaluated again
    assert again["selected"]["key"] == summary["selected"]["key"]


def test_race_options_are_checked():
    with pytest.raises(RewindError, match="--race"):
        sweep.SweepSpec(adapter="a", race=True, pass_k=[1]).check()


def test_budget_without_race_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--adapter", "a", "--budget", "10"])
    assert exit_.value.code != 0 and "--race" in capsys.readouterr().err
