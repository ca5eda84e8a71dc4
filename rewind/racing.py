"""`rewind sweep --race --budget ITEMS`: the planned points raced over chunks of validation items (stats.race).

Each round gives every surviving point the next --chunk items of every target and general task, then drops the
points another survivor confidently dominates (paired, on both axes; the base and the final are never dropped),
until the budget of item evaluations is spent, the items run out, or one point besides them is left. Every chunk
is one line of items.jsonl (split items.RACE, its item positions in "chunk"), so a killed race rerun with the same
command takes the chunks it has from the log and races on to the same decisions. race.json keeps the rounds.

The survivors were all given the same items: each task's chunks joined become the point's validation lines
(results.jsonl and items.jsonl, the score lm-eval's aggregate over those items), so the report, its intervals and
the selection treat them as any sweep's points; the dropped points are in race.json only. A ratio-of-sums task
(bits_per_byte) is linearized per chunk while racing (items.py), so its race-time scores are first-order; the
joined lines score it exactly.
"""

from __future__ import annotations

import math

from . import files, items, stats
from .errors import RewindError
from .results import BASE, FINAL, VALIDATION
from .session import Session

RACE_FILE = "race.json"


def run(session: Session) -> stats.Race:
    """Race the session's planned points (see the module docstring); write race.json and the survivors' lines."""
    spec = session.spec
    if session.world > 1:
        raise RewindError("--race runs on one device: each round depends on every point's last chunk")
    tasks = raced_tasks(session)
    points = {p.key: p for p in session.planned()}
    logged = {_chunk_key(line): line for line in session.item_records() if line["split"] == items.RACE}

    def evaluate_chunk(keys: list[str], task: str, chunk: slice) -> dict:
        out = {}
        for key in keys:
            line = logged.get((key, task, chunk.start, chunk.stop))
            if line is None:
                line = logged[key, task, chunk.start, chunk.stop] = session.evaluate_chunk(points[key], task, chunk)
            out[key] = _scores(line)
        return out

    named = {"target": spec.target, "general": spec.general}
    axes = {a: stats.suite_weights({s: [t for t in tasks if tasks[t] == s] for s in named[a]}) for a in items.AXES}
    sizes = raced_sizes(session)
    keep = [BASE.key, FINAL.key]
    race = stats.race(evaluate_chunk, list(points), axes, rounds(session), spec.budget, sizes, keep, spec.confidence)
    settle(session, race, logged)
    record = {"budget": spec.budget, "chunk": spec.chunk, "spent": race.spent, "survivors": race.survivors}
    evaluated = {p: {t: len(x) for t, x in s.items()} for p, s in race.scores.items()}
    files.write_json(session.out / RACE_FILE, {**record, "items": evaluated, "log": race.log})
    return race


def raced_tasks(session: Session) -> dict[str, str]:
    """{task: its suite} of the target and general tasks a race gives chunks of (a group's items cannot be)."""
    entries = [e for e in session.evaluators[VALIDATION].entries if session.roles[e.suite] in items.AXES]
    if any(len(e.items) != 1 for e in entries):
        raise RewindError("--race: a task group's items cannot be given a chunk at a time; race its tasks instead")
    return {e.name: e.suite for e in entries}


def raced_sizes(session: Session) -> dict[str, int]:
    """{task: its validation items} (after --limit)."""
    entries = session.evaluators[VALIDATION].entries
    return {e.name: i.stop - i.start for e in entries if e.name in raced_tasks(session) for i in e.items.values()}


def rounds(session: Session) -> list[int]:
    """The chunk of every round: as many as the largest task has chunks of items."""
    return [session.spec.chunk] * math.ceil(max(raced_sizes(session).values()) / session.spec.chunk)


def _chunk_key(line: dict) -> tuple:
    return line["point"], line["task"], *line["chunk"]


def _scores(line: dict):
    x = items.scores(line)
    if x is None:
        raise RewindError(f"--race: task {line['task']} has no per-item scores (lm-eval logged none), so no race")
    return x


def settle(session: Session, race: stats.Race, logged: dict) -> None:
    """Each survivor's validation lines: its chunks of each task joined, in order (module docstring)."""
    done = session.finished()
    for key in race.survivors:
        if (key, VALIDATION) in done:
            continue
        chunks = sorted((line for line in logged.values() if line["point"] == key), key=lambda line: line["chunk"])
        joined: dict[str, dict] = {}
        for line in chunks:
            if line["task"] not in joined:
                joined[line["task"]] = {**line, "split": VALIDATION, "doc": [], "values": [], "weights": []}
            for field in ("doc", "values", "weights"):
                joined[line["task"]][field] += line[field]
        lines = [_joined(line) for line in joined.values()]
        seconds = round(sum(line["seconds"] for line in chunks), 3)
        session.items.append(lines)
        session.log.append([_record(line, seconds) for line in lines])


def _joined(line: dict) -> dict:
    """A task's chunks joined: scored as lm-eval aggregates those items (the mean of their linearized scores)."""
    out = {k: v for k, v in line.items() if k not in ("chunk", "seconds", "part")}
    return {**out, "score": float(items.scores(out).mean())}


def _record(line: dict, seconds: float) -> dict:
    """The results.jsonl line of a joined task (what the report reads of one)."""
    keep = ("run", "point", "path", "alpha", "layers", "split", "role", "suite", "task", "metric", "score")
    return {**{k: line[k] for k in keep}, "n": len(line["doc"]), "raced": True, "point_seconds": seconds}
