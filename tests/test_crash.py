"""Issue 7, crash safety: `kill -9` in the middle of a sweep or an export, then the same command again.

A sweep keeps every point that finished (its lines are not recomputed, results.jsonl stays valid JSONL); an export
never shows a half checkpoint at --out (only its hidden temp dir stays behind, which no cleaner takes while the
export lives), and the rerun succeeds and removes that temp dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tinysweep
from tiny import logits, make_adapter, tiny_base
from transformers import AutoModelForCausalLM

from rewind import export, outdir, results, sweep

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}
TESTS = Path(__file__).parent


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # the checkout's rewind first: not an installed one from elsewhere
    path = os.pathsep.join([str(TESTS.parent), str(TESTS)])
    return subprocess.Popen(
        [sys.executable, *args],
        env={**ENV, "PYTHONPATH": path},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(
                f"the process ended (rc {proc.returncode}) before it could be killed:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def _kill9(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "already finished: the kill would test nothing"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def _complete_lines(path: Path) -> list[str]:
    """The lines of whole points (a point's lines carry "part": [i, n]); a kill may leave a point's first lines."""
    text = path.read_text() if path.is_file() else ""
    lines = text.splitlines(keepends=True)[: text.count("\n")]
    parts = [json.loads(line)["part"] for line in lines]
    ends = [i + 1 for i, (k, n) in enumerate(parts) if k == n - 1]  # after each point's last line
    return lines[: ends[-1]] if ends else []


def test_sweep_killed_mid_run_resumes_without_recomputing(tmp_path):
    base, adapter = tinysweep.make(tmp_path)
    out = tmp_path / "sweep"
    args = ["-m", "rewind.cli", *tinysweep.sweep_args(base, adapter, out, "--alphas", "0,0.2,0.4,0.6,0.8,1", limit=2)]
    results = out / "results.jsonl"

    proc = _start(args, tmp_path / "first.log")
    _wait_for(lambda: len(_complete_lines(results)) >= 2, proc, 120, tmp_path / "first.log")  # >= 1 point
    _kill9(proc)
    kept = _complete_lines(results)
    finished = {json.loads(line)["point"] for line in kept}
    assert finished and "linear@0.8" not in finished, "the kill came too late to test a resume"
    assert not (out / "summary.json").exists()

    proc = _start(args, tmp_path / "second.log")
    assert proc.wait(180) == 0, (tmp_path / "second.log").read_text()[-3000:]
    after = results.read_text().splitlines(keepends=True)
    records = [json.loads(line) for line in after]  # every line parses: valid JSONL
    assert after[: len(kept)] == kept  # finished points' lines untouched, torn tail (if any) dropped
    for point in finished:  # and never evaluated again
        mine = [
            line for line in after if json.loads(line)["point"] == point and json.loads(line)["split"] == "validation"
        ]
        assert mine == [
            line for line in kept if json.loads(line)["point"] == point and json.loads(line)["split"] == "validation"
        ], point
    validation = {r["point"] for r in records if r["split"] == "validation"}
    assert validation == {"base@0", "final@1", "linear@0.2", "linear@0.4", "linear@0.6", "linear@0.8"}
    assert len(records) == len({(r["point"], r["split"], r["task"]) for r in records})  # no duplicates
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selected"]["key"] in validation
    # items.jsonl came through the kill too: every line whole, every scored task's items there, so intervals
    logged = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert {(r["point"], r["split"], r["task"]) for r in logged} == {
        (r["point"], r["split"], r["task"]) for r in records
    }
    assert all(row["target_ci"] is not None for row in summary["points"])


def test_sweep_resumes_over_a_point_cut_after_its_first_line(tmp_path):
    """A kill inside a point's write can leave its first line whole and the next one cut: the rerun drops the
    whole point and evaluates it once more, so no line is there twice."""
    base, adapter = tinysweep.make(tmp_path)
    out = tmp_path / "sweep"
    spec = sweep.SweepSpec(
        adapter=str(adapter),
        base=str(base),
        alphas=[0, 1],
        target=[tinysweep.TARGET],
        general=[tinysweep.GENERAL],
        limit=1,
        dtype="fp32",
        device="cpu",
    )
    sweep.Sweep(spec, out).run(progress=False)
    results = out / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    assert [json.loads(line)["part"] for line in lines[:4]] == [[0, 2], [1, 2], [0, 2], [1, 2]]
    results.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # final@1 cut in its second line
    (out / "summary.json").unlink()

    sweep.Sweep(spec, out).run(progress=False)
    after = results.read_text().splitlines(keepends=True)
    assert after[:2] == lines[:2]  # the whole point before it is kept as it was
    records = [json.loads(line) for line in after]
    assert len(records) == len({(r["point"], r["split"], r["task"]) for r in records}) == len(lines)
    final = [r for r in records if (r["point"], r["split"]) == ("final@1", "validation")]
    assert [r["part"] for r in final] == [[0, 2], [1, 2]]  # evaluated again, whole


def test_results_log_reads_whole_points_only(tmp_path):
    def line(point, i, n):
        return (
            json.dumps(
                {
                    "run": "r",
                    "point": point,
                    "path": "p",
                    "alpha": 0,
                    "split": "validation",
                    "role": "t",
                    "suite": "s",
                    "task": f"t{i}",
                    "score": 0,
                    "part": [i, n],
                }
            )
            + "\n"
        )

    old = (
        json.dumps(
            {
                "run": "r",
                "point": "old",
                "path": "p",
                "alpha": 0,
                "split": "validation",
                "role": "t",
                "suite": "s",
                "task": "t",
                "score": 0,
            }
        )
        + "\n"
    )  # written before lines had parts
    path = tmp_path / "results.jsonl"
    whole = old + line("a", 0, 2) + line("a", 1, 2)
    path.write_text(whole + line("b", 0, 2) + line("c", 0, 1) + line("d", 0, 3) + line("d", 1, 3) + '{"ru')
    log = results.ResultsLog(path)  # opening repairs the tail: from d's first line on
    assert path.read_text() == whole + line("b", 0, 2) + line("c", 0, 1)
    assert [r["point"] for r in log.records()] == ["old", "a", "a", "c"]  # b is cut inside the file: skipped
    log.append(
        [
            {
                "run": "r",
                "point": "e",
                "path": "p",
                "alpha": 0,
                "split": "validation",
                "role": "t",
                "suite": "s",
                "task": "t",
                "score": 0,
            }
        ]
    )
    assert [r["point"] for r in log.records("r")] == ["old", "a", "a", "c", "e"]


SLOW_EXPORT = """
import pathlib, sys, threading, time
from rewind import tensorio

real, marker, lock = tensorio.ShardWriter.close, pathlib.Path(sys.argv[1]), threading.Lock()

def slow_close(self):
    digest = real(self)
    with lock:  # shards are written in parallel
        marker.write_text(str(int(marker.read_text() or 0) + 1) if marker.exists() else "1")
    time.sleep(0.4)
    return digest

tensorio.ShardWriter.close = slow_close
from rewind.cli import main
main(sys.argv[2:])
"""


class Watcher(threading.Thread):
    """Looks at --out every few ms: it must be absent or a complete checkpoint, never anything in between."""

    def __init__(self, out: Path, shards: int):
        super().__init__(daemon=True)
        self.out, self.shards, self.seen, self.bad = out, shards, 0, []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                names = {p.name for p in self.out.iterdir()} if self.out.exists() else None
            except FileNotFoundError:
                names = None
            if names is not None:
                self.seen += 1
                shards = [n for n in names if n.endswith(".safetensors")]
                if "README.md" not in names or "config.json" not in names or len(shards) != self.shards:
                    self.bad.append(sorted(names))
            time.sleep(0.002)


def test_export_killed_mid_write_never_shows_a_half_checkpoint(tmp_path):
    base = tiny_base()
    base.save_pretrained(tmp_path / "base", max_shard_size="60KB")
    shards = len(list((tmp_path / "base").glob("*.safetensors")))
    assert shards >= 5
    make_adapter("lora", base, tmp_path / "a")
    (tmp_path / "slow_export.py").write_text(SLOW_EXPORT)
    marker, out = tmp_path / "shards-written", tmp_path / "exports" / "point"
    argv = [
        "export",
        "--base",
        str(tmp_path / "base"),
        "--adapter",
        str(tmp_path / "a"),
        "--out",
        str(out),
        "--alpha",
        "0.5",
    ]

    watcher = Watcher(out, shards)
    watcher.start()
    proc = _start([str(tmp_path / "slow_export.py"), str(marker), *argv], tmp_path / "export.log")
    _wait_for(lambda: marker.exists() and int(marker.read_text() or 0) >= 2, proc, 120, tmp_path / "export.log")
    writing = list(out.parent.iterdir())
    outdir.remove_stale(out.parent)  # what another export into this parent does first: a live export's dir stays
    assert list(out.parent.iterdir()) == writing and (writing[0] / outdir.LOCK).is_file()
    _kill9(proc)
    time.sleep(0.05)
    assert not out.exists()
    left = list(out.parent.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".point.tmp-"), left  # only the hidden temp dir
    assert 2 <= len(list(left[0].glob("*.safetensors"))) < shards  # it really died mid-write

    proc = _start(["-m", "rewind.cli", *argv], tmp_path / "rerun.log")  # the same command again
    assert proc.wait(120) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    time.sleep(0.05)  # let the watcher see the finished export too
    watcher.done.set()
    watcher.join()
    assert not watcher.bad, f"a half checkpoint was visible at --out: {watcher.bad[:3]}"
    assert watcher.seen > 0  # the watcher did look at the finished one
    assert len(list(out.glob("*.safetensors"))) == shards
    assert [p.name for p in out.parent.iterdir()] == ["point"]  # the killed export's temp dir went
    assert not (out / outdir.LOCK).exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    expected = export.plan(
        export.ExportSpec(adapter=tmp_path / "a", base=tmp_path / "base", out=tmp_path / "unused", alpha=0.5)
    )
    from rewind.engine import attach

    rw = attach(AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval(), tmp_path / "a", expected.point.path)
    rw.set(0.5)
    assert (logits(reloaded) - logits(rw.model)).abs().max() == 0
