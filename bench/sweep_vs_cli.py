"""Seconds per sweep point: `rewind sweep` (resident model, in-place switch) vs the old way per point.

The old way, as PEFT-Arena's scripts do it: write a merged checkpoint for the point, then cold-start the
`lm_eval` CLI on it (one call per chat / non-chat task group, as the bundled tasks need). Reads the rewind
numbers from a finished sweep's results.jsonl, runs the old way for a few of its points, and checks that both
report the same scores.

    python bench/sweep_vs_cli.py --sweep rewind-sweep --points base@0,final@1 [--remeasure] [--out FILE]
    python bench/sweep_vs_cli.py --adapter A --base smollm2 --limit 32 --batch-size 64 --points base@0   # no sweep

Without a finished sweep (`--adapter`), the points are parsed from their keys (`path@alpha`) and always timed here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from rewind import export, results, sweep
from rewind.evaluate.suites import TASKS_DIR
from rewind.session import Session


def old_way(
    spec: dict, point: dict, tasks: dict[str, bool], limit, device: str, workdir: Path, batch_size: str = "auto"
) -> dict:
    """Merge to disk + lm_eval CLI per point. Returns seconds and the scores it printed."""
    start = time.perf_counter()
    out = workdir / f"merged-{point['path']}-{point['alpha']:g}"
    alpha = {"base": 0.0, "final": 1.0}.get(point["path"], point["alpha"])
    path = point["path"] if point["path"] not in ("base", "final") else "auto"
    export.export(spec["base"], spec["adapter"], out, alpha=alpha, path=path, force=True)
    merged_s = time.perf_counter() - start
    scores, where = {}, task_dirs(tasks, spec.get("include_path") or [])
    for call, (chat, tasks_dir) in enumerate(sorted({(chat, where[t]) for t, chat in tasks.items()})):
        names = [t for t, c in tasks.items() if c == chat and where[t] == tasks_dir]
        results = workdir / f"lm_eval-{call}"
        cmd = [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={out},dtype=bfloat16",
            "--tasks",
            ",".join(names),
            "--include_path",
            tasks_dir,
            "--device",
            device,
            "--batch_size",
            batch_size,
            "--output_path",
            str(results),
        ]
        if limit:
            cmd += ["--limit", str(limit)]
        if chat:
            cmd += ["--apply_chat_template"]
        done = subprocess.run(
            cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, stdout=subprocess.DEVNULL
        )
        # lm_eval saves its results before printing the table; a box without pytablewriter fails only at the table.
        if done.returncode and not any(results.rglob("results_*.json")):
            raise subprocess.CalledProcessError(done.returncode, cmd)
        for file in results.rglob("results_*.json"):
            for task, values in json.loads(file.read_text())["results"].items():
                scores[task] = values
    return {"seconds": time.perf_counter() - start, "merge_seconds": merged_s, "scores": scores}


def task_dirs(tasks, include_path: list[str]) -> dict[str, str]:
    """The dir of each task's YAML: the sweep's --include-path dirs, then the bundled suites (the CLI takes one
    --include_path per call, so tasks of different dirs run in different calls)."""
    found: dict[str, str] = {}
    for tasks_dir in [*include_path, str(TASKS_DIR)]:
        for yaml in sorted(Path(tasks_dir).rglob("*.yaml")):
            name = re.search(r"^task:\s*(\S+)", yaml.read_text(), re.M)
            if name and name.group(1) in tasks:
                found.setdefault(name.group(1), tasks_dir)
    missing = set(tasks) - set(found)
    if missing:
        raise SystemExit(f"no task YAML for {sorted(missing)} under {[*include_path, str(TASKS_DIR)]}")
    return found


def remeasure(
    spec: dict, keys: list[str], lines: list[dict], split: str, device: str, out: Path
) -> tuple[list[dict], float]:
    """rewind's lines for `keys` timed again in this process: one resident model, each point an in-place switch.

    The first point of a process also pays one-time start-up (CUDA kernels, lm-eval's first generation), which a
    sweep pays once for all its points: so the first key is evaluated once on the other split first, untimed here;
    its seconds come back separately."""
    again = Session(sweep.SweepSpec(**{**spec, "device": device}), out)
    again.open()
    points = {key: _point(key) for key in keys} | {r["point"]: results.Point.of(r) for r in lines}
    warm_up = again.evaluate([points[keys[0]]], "validation" if split == "test" else "test")
    return [line for key in keys for line in again.evaluate([points[key]], split)], warm_up[0]["point_seconds"]


def _point(key: str) -> results.Point:
    path, alpha = key.split("@")  # uniform points only: a searched schedule needs its sweep's record
    return results.Point.of({"path": path, "alpha": float(alpha)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=sweep.DEFAULT_OUT)
    parser.add_argument("--points", required=True, help="comma list of point keys, e.g. linear@0.5,final@1")
    # The bundled YAMLs point lm_eval's CLI at their test split: compare points the sweep scored on test.
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--batch-size", default=None, help="lm_eval's; default: the sweep's (if it had none: auto on cuda, 8 on cpu)"
    )
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="time rewind's points again here, right before the old way, instead of reading the "
        "sweep's seconds (which may have shared the GPU with other work); a warm-up point on the "
        "other split goes first",
    )
    parser.add_argument("--adapter", default=None, help="no finished sweep: this adapter's points, timed here")
    parser.add_argument("--base", default=None, help="with --adapter: the base (default smollm2)")
    parser.add_argument("--limit", type=int, default=None, help="with --adapter: items per task")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.adapter:
        batch = int(args.batch_size) if args.batch_size and args.batch_size.isdigit() else args.batch_size
        spec = asdict(sweep.SweepSpec(adapter=args.adapter, base=args.base, limit=args.limit, batch_size=batch))
        lines, args.remeasure = [], True
    else:
        record, _ = sweep.load(args.sweep)
        spec = record["spec"]
        lines = [
            r
            for r in results.ResultsLog(Path(args.sweep) / results.RESULTS_FILE).records(record["run"])
            if r["split"] == args.split
        ]
    first_point_s = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.remeasure:
            lines, first_point_s = remeasure(
                spec, args.points.split(","), lines, args.split, args.device, Path(tmp) / "again"
            )
        tasks = {r["task"]: r["task"].startswith("math") for r in lines}  # math tasks use the chat template
        for key in args.points.split(","):
            mine = [r for r in lines if r["point"] == key]
            point = {"path": mine[0]["path"], "alpha": mine[0]["alpha"]}
            # lm-eval's auto batch size probes ever larger batches: minutes and GBs on a CPU
            batch = args.batch_size or str(spec.get("batch_size") or ("auto" if args.device.startswith("cuda") else 8))
            old = old_way(spec, point, tasks, spec["limit"], args.device, Path(tmp), batch)
            agree = {
                r["task"]: abs(old["scores"][r["task"]][r["metric"]] - r["value"])
                for r in mine
                if r["task"] in old["scores"]
            }
            result = {
                "bench": "sweep_vs_cli",
                "point": key,
                "split": args.split,
                "limit": spec["limit"],
                "batch_size": batch,
                "rewind_remeasured": args.remeasure,
                "rewind_first_point_s": first_point_s,  # with --remeasure: the warm-up, start-up included
                "rewind_point_s": mine[0]["point_seconds"],
                "rewind_switch_s": mine[0]["switch_seconds"],
                "old_way_s": old["seconds"],
                "old_merge_s": old["merge_seconds"],
                "speedup": old["seconds"] / mine[0]["point_seconds"],
                "max_abs_score_diff": max(agree.values()) if agree else None,
                "tasks": len(tasks),
                "rewind_point_s_median_all": statistics.median(
                    {r["point"]: r["point_seconds"] for r in lines}.values()
                ),
            }
            line = json.dumps(result)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
