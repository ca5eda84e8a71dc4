"""`rewind sweep`: evaluate a resident model along paths, stream results, pick the Pareto-best point.

The main job is a policy over a `Session` (session.py: the `SweepSpec`, one resident model, each point an in-place
alpha switch plus lm-eval on the live model, lines streamed to results.jsonl) and a `Report`
(report.py: scores, frontier, selection, summary). Every planned point is scored on the validation split (sharded
over torchrun ranks); rank 0 then selects on validation and scores the chosen point, the base and the final adapter
on the test split. A killed sweep rerun with the same command skips what is done. With --race the planned points
are raced over chunks of validation items instead (racing.py: one device), the survivors reported as any points.
"""

from __future__ import annotations

from pathlib import Path

from . import files
from .progress import Work
from .report import SUMMARY_FILE, Report
from .results import BASE, FINAL, TEST, VALIDATION, Point, read_record, shard
from .session import Session, SweepSpec

DEFAULT_OUT = "rewind-sweep"


class Sweep:
    """The main job on one spec: `run` evaluates, selects, scores the test split and writes the summary."""

    def __init__(self, spec: SweepSpec, out: str | Path = DEFAULT_OUT):
        self.session = Session(spec, out)

    def run(self, progress: bool = True) -> dict:
        """summary.json's object, on rank 0 ({} on the other ranks)."""
        try:
            report = evaluate(self.session, progress)
            return conclude(self.session, report) if report else {}
        finally:
            finish(self.session)


def evaluate(session: Session, progress: bool = True) -> Report | None:
    """Open the session and score this rank's share of the planned points on validation (what is not done yet);
    after every rank has, rank 0 gets the report of them all (the other ranks None). One bar shows the job:
    points x tasks, the test split's three points included."""
    session.open()
    todo = shard(session.planned(), session.finished(), session.rank, session.world)
    repeat = session.rank == 0 and session.model.device.type == "cuda"  # a CPU evaluation repeats exactly
    if session.spec.race:
        from . import racing

        chunks = len(racing.raced_tasks(session)) * len(racing.rounds(session)) * len(session.planned())
        session.bar = Work("race", chunks + (3 + repeat) * session.tasks, disable=not progress)
        racing.run(session)
    else:
        session.bar = Work("sweep", (len(todo) + 3 + repeat) * session.tasks, disable=not progress or session.rank != 0)
        session.evaluate(todo, VALIDATION)  # points of one path in grid passes (--batch-points)
    if repeat:
        session.repeat_base()
    _barrier(session.world)
    session.take_items()  # the report reads them all from the log
    return Report(session.record, session.records(), session.item_records()) if session.rank == 0 else None


def finish(session: Session) -> None:
    """Close the job's bar at what was done (before the table, or before an error's one line)."""
    if session.bar is not None:
        session.bar.finish()
        session.bar = None


def conclude(session: Session, report: Report, more: list[Point] = ()) -> dict:
    """Score the test split of the base, the final adapter, `more` and the selected point; write summary.json,
    pareto.png and report.html; return the summary."""
    from . import report_html

    chosen = report.selection.selected.point
    report.extend(session.evaluate([BASE, FINAL, *more, chosen], TEST), session.take_items())
    summary = report.write(session.out)
    report_html.write(session.out)
    return summary


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()


def load(out: str | Path = DEFAULT_OUT) -> tuple[dict, dict | None]:
    """(sweep.json, summary.json or None) of a sweep dir, for `rewind export` with no flags."""
    out = Path(out)
    record = read_record(out, ", or pass --adapter")
    summary_path = out / SUMMARY_FILE
    return record, files.read_json(summary_path, "sweep summary") if summary_path.is_file() else None
