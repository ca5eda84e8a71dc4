"""Bench-local: a benchmark's JSON record, stamped with torch version, host and date, printed as one line and
appended to the script's --out file."""

from __future__ import annotations

import json
import platform
import time

import torch


def emit(record: dict, out: str | None) -> None:
    """Print `record` stamped (torch, host, date: which run it was) as one JSON line, flushed, and append it to
    `out` if given: a later failure keeps the records already written."""
    line = json.dumps(record | {"torch": torch.__version__, "host": platform.node(), "date": time.strftime("%Y-%m-%d")})
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
