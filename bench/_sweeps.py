"""Bench-local: a finished sweep read for analysis only (no log repaired, nothing written)."""

from __future__ import annotations

from pathlib import Path

from rewind import items
from rewind.report import Report
from rewind.results import RESULTS_FILE, ResultsLog, read_record


def read(sweep: str | Path) -> tuple[Report, list[dict], list[dict]]:
    """The sweep's report, its run's results.jsonl lines and its items.jsonl lines, the files left as they are."""
    record = read_record(Path(sweep))
    records = ResultsLog(Path(sweep) / RESULTS_FILE, repair=False).records(record["run"])
    lines = items.ItemsLog(Path(sweep) / items.ITEMS_FILE, repair=False).records(record["run"])
    return Report(record, records, lines), records, lines
