"""Issue 19: export's pipeline (reading, merging and writing overlap in threads) writes what a sequential export
writes, byte for byte; a failure in a worker thread is the same one-line error with nothing left behind; and the
bytes in flight stay within the pipeline's budget."""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file
from tiny import make_adapter, tiny_base

from rewind import export, pipeline, tensorio
from rewind.errors import RewindError

SEQUENTIAL = pipeline.Settings(workers=1, files_at_once=1, in_flight=1)  # one tensor at a time, in file order
BUSY = pipeline.Settings(workers=3, files_at_once=3, in_flight=64 << 10)  # several shards and tensors at once


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    model = tiny_base()
    model.save_pretrained(d, max_shard_size="100KB")
    assert len(list(d.glob("*.safetensors"))) >= 5
    return model, d


def _files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "README.md"}  # the card has a date


def _old_merged_export(p: export.ExportPlan, out) -> None:
    """The export before the pipeline: each shard's tensors merged one by one, saved by safetensors' save_file."""
    out.mkdir()
    for shard in p.shards:
        tensors = {}
        with safe_open(shard, "pt") as f:
            for name in f.keys():
                w = f.get_tensor(name)
                tensors[name] = (p.moved(name, w.float() if p.dtype else w, p.dtype) if name in p.alphas else w).to(
                    p.dtype or w.dtype
                )
        save_file(tensors, out / shard.name, metadata={"format": "pt"})


@pytest.mark.parametrize("kind", ["lora", "oft"])
@pytest.mark.parametrize("fmt,dtype", [("merged", None), ("merged", "bf16"), ("adapter", None), ("adapter", "bf16")])
def test_pipeline_writes_what_a_sequential_export_writes(kind, fmt, dtype, base, tmp_path):
    model, base_dir = base
    make_adapter(kind, model, tmp_path / "a")
    spec = dict(adapter=tmp_path / "a", base=base_dir, alpha=0.4, fmt=fmt, dtype=dtype)
    for name, settings in [("sequential", SEQUENTIAL), ("busy", BUSY), ("default", None)]:
        export.write(export.plan(export.ExportSpec(out=tmp_path / name, **spec)), settings=settings)
    want = _files(tmp_path / "sequential")
    assert _files(tmp_path / "busy") == want and _files(tmp_path / "default") == want
    for name in [n for n in want if n.endswith(".safetensors")]:  # save_file's layout, header and metadata
        save_file(load_file(tmp_path / "busy" / name), tmp_path / "resaved", metadata={"format": "pt"})
        assert (tmp_path / "resaved").read_bytes() == want[name], name
    if fmt == "merged":
        _old_merged_export(export.plan(export.ExportSpec(out=tmp_path / "unused", **spec)), tmp_path / "old")
        shards = {n: b for n, b in want.items() if n.endswith(".safetensors")}
        assert len(shards) >= 5 and shards == _files(tmp_path / "old")


def test_a_worker_error_is_the_one_line_error_and_nothing_is_left(base, tmp_path, capsys):
    """A tensor that overflows fp16 is found by a worker thread, mid-export, while other shards are being written:
    the CLI prints the same one line as the sequential export did, and --out and its temp dir are gone."""
    from rewind.cli import main

    model, _ = base
    fp16 = tmp_path / "fp16"
    copy.deepcopy(model).half().save_pretrained(fp16, max_shard_size="60KB")
    make_adapter("lora", model, tmp_path / "a")
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    big = {k: t * 1e7 if "layers.2.mlp.down_proj.lora_B" in k else t for k, t in tensors.items()}  # in a late shard
    save_file(big, tmp_path / "a" / "adapter_model.safetensors")
    argv = ["export", "--base", str(fp16), "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "x" / "out")]
    with pytest.raises(SystemExit) as done:
        main(argv)
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    err = [line for line in lines if "%|" not in line]  # progress bars aside
    assert done.value.code != 0 and len(err) == 1 and err[0].startswith("rewind:"), lines
    assert "model.layers.2.mlp.down_proj.weight:" in err[0] and "non-finite values" in err[0], err
    assert not (tmp_path / "x").exists()  # neither --out nor its temp dir, nor the dir made for them


def test_a_read_error_in_a_worker_stops_every_thread_and_leaves_nothing(base, tmp_path, monkeypatch):
    model, base_dir = base
    make_adapter("oft", model, tmp_path / "a")
    real, seen = tensorio.ShardReader.read, []

    def failing_read(self, name, into=None):
        seen.append(name)
        if name == "model.layers.1.mlp.up_proj.weight":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(self, name, into)

    monkeypatch.setattr(tensorio.ShardReader, "read", failing_read)
    p = export.plan(export.ExportSpec(adapter=tmp_path / "a", base=base_dir, out=tmp_path / "x" / "out", alpha=0.5))
    with pytest.raises(RewindError, match=r"^--out .*: writing failed \(Input/output error\); nothing was written"):
        export.write(p, settings=BUSY)
    assert 0 < len(seen) < sum(len(tensorio.read_header(s)) for s in p.shards)  # it stopped, mid-export
    assert not (tmp_path / "x").exists()  # neither --out nor its temp dir, nor the dir made for them


def test_the_bytes_in_flight_stay_within_the_budget(base, tmp_path, monkeypatch):
    """A slow writer: reading and merging run ahead of it until the budget stops them, and no further."""
    model, base_dir = base
    make_adapter("lora", model, tmp_path / "a")
    p = export.plan(export.ExportSpec(adapter=tmp_path / "a", base=base_dir, out=tmp_path / "out", alpha=0.5))
    sizes = {n: e.nbytes for s in p.shards for n, e in tensorio.read_header(s).items()}
    budget = 160 << 10  # above any one tensor's cost (merged on CPU: 12 bytes a float), a third of the model
    assert max(12 * size // 4 for size in sizes.values()) <= budget < sum(sizes.values())
    lock, live, peaks = threading.Lock(), [0], []
    real_read, real_write = tensorio.ShardReader.read, tensorio.ShardWriter.write

    def read(self, name, into=None):
        with lock:
            live[0] += sizes[name]
            peaks.append(live[0])
        return real_read(self, name, into)

    def slow_write(self, name, tensor):
        time.sleep(0.005)
        real_write(self, name, tensor)
        with lock:
            live[0] -= sizes[name]

    monkeypatch.setattr(tensorio.ShardReader, "read", read)
    monkeypatch.setattr(tensorio.ShardWriter, "write", slow_write)
    export.write(p, settings=pipeline.Settings(workers=4, files_at_once=2, in_flight=budget))
    assert live[0] == 0 and len(peaks) == len(sizes)
    assert max(peaks) <= budget  # the bound holds...
    assert max(peaks) > 2 * max(sizes.values())  # ...and was reached: reading ran ahead of the writer
    export.write(
        export.plan(export.ExportSpec(adapter=tmp_path / "a", base=base_dir, out=tmp_path / "unbounded", alpha=0.5)),
        settings=pipeline.Settings(workers=4, files_at_once=2, in_flight=None),
    )
    assert max(peaks) > budget  # without it, the same export holds more: the budget is what bounded it


def test_a_made_tensor_waiting_for_its_writer_holds_only_its_own_bytes(tmp_path, monkeypatch):
    """A job's transient bytes (what it computed in) go back to the budget when it returns, not when its tensor is
    written: with the writer busy, the next job starts."""
    tensors = {f"t{i}": torch.full((2,), float(i)) for i in range(4)}
    header, names = tensorio.layout({name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()})
    events, real_write = [], tensorio.ShardWriter.write

    def make(name):
        events.append(("made", name))
        return {name: tensors[name]}

    def slow_write(self, name, tensor):
        time.sleep(0.3)  # long enough for a free worker to run the next job, if the budget lets it
        real_write(self, name, tensor)
        events.append(("written", name))

    monkeypatch.setattr(tensorio.ShardWriter, "write", slow_write)
    jobs = {name: pipeline.Job(partial(make, name), cost=10, transient=8) for name in names}
    lane = pipeline.Lane(tmp_path / "x.safetensors", header, names)
    _, budget = pipeline.run([lane], jobs, pipeline.Settings(workers=2, files_at_once=1, in_flight=12))
    assert budget.peak <= 12 and (tmp_path / "x.safetensors").read_bytes() == save(tensors, metadata=tensorio.METADATA)
    assert events[:3] == [("made", names[0]), ("made", names[1]), ("written", names[0])]  # 2 + 10 fit in 12


def test_order_starts_a_file_only_after_the_one_before_it_in_its_slot():
    order = list(pipeline._order([2, 1, 3, 0, 2], 2))
    starts = [lane for lane, i in order if i is None]
    assert sorted(starts) == [0, 1, 2, 3, 4]
    for lane, _ in [(lane, i) for lane, i in order if i is None and lane >= 2]:
        before = lane - 2
        last = max(k for k, (j, i) in enumerate(order) if j == before)
        assert order.index((lane, None)) > last  # its slot's previous file is fully started
    assert [i for j, i in order if j == 2 and i is not None] == [0, 1, 2]  # each file's tensors in file order
    assert len(order) == 5 + 8


class _FullDisk:
    """A file whose second write finds the disk full."""

    def __init__(self, file):
        self.file, self.writes = file, 0

    def write(self, data):
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def close(self):
        self.file.close()


def test_the_writer_hashes_what_it_writes_and_a_failed_write_stops_its_hasher(tmp_path):
    tensors = {"b": torch.arange(70_000, dtype=torch.float32), "a": torch.ones(3, 7, dtype=torch.bfloat16)}
    header, names = tensorio.layout({name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()})
    with tensorio.ShardWriter(tmp_path / "x.safetensors", header) as out:
        for name in names:
            out.write(name, tensors[name])
        digest = out.close()
    data = (tmp_path / "x.safetensors").read_bytes()
    assert data == save(tensors, metadata=tensorio.METADATA) and digest == hashlib.sha256(data).hexdigest()
    with pytest.raises(OSError, match="No space left"), tensorio.ShardWriter(tmp_path / "y", header) as out:
        out._file = _FullDisk(out._file)
        for name in names:
            out.write(name, tensors[name])
    assert not [t.name for t in threading.enumerate() if t.name.startswith("rewind-hash")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_all_finite_finds_one_nan_or_inf_anywhere(dtype):
    """The finite check export runs on every tensor it computes (and on every adapter tensor it reads)."""
    for n in [1, 7, 64, 1000, 4099]:  # vectorised reductions: full vectors and the tail behind them
        clean = torch.randn(n, 3).to(dtype)
        assert tensorio.all_finite(clean) and tensorio.all_finite(clean[:, 1])  # strided too
        for bad in [float("nan"), float("inf"), -float("inf")]:
            for at in {0, n // 2, n - 1}:
                poisoned = clean.clone()
                poisoned[at, 1] = bad
                assert not tensorio.all_finite(poisoned) and not tensorio.all_finite(poisoned[:, 1]), (n, bad, at)
    assert tensorio.all_finite(torch.empty(0, 4, dtype=dtype)) and tensorio.all_finite(torch.arange(5))


@pytest.mark.parametrize("cores,workers,files_at_once", [(2, 2, 2), (16, 8, 4)])
def test_the_pipeline_grows_with_the_cores_within_the_memory_bound(
    cores, workers, files_at_once, tmp_path, monkeypatch
):
    """Threads grow with the cores; half the largest shard is in flight whatever their number (with 8 workers'
    scratch buffers, peak RSS stays under 1.3x one shard + the adapter on the H200's 7B shape: 4.93 GB shards,
    0.65 GB of interpreter and CUDA)."""
    shards = []
    for i, size in enumerate([4_932_751_008, 1_000_000]):
        shards.append(tmp_path / f"{i}.safetensors")
        shards[-1].touch()
        os.truncate(shards[-1], size)  # sparse: no disk used
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    settings = export.pipeline_settings(SimpleNamespace(shards=shards))
    assert (settings.workers, settings.files_at_once) == (workers, files_at_once)
    assert settings.in_flight == 4_932_751_008 // 2


def test_export_profiles_where_its_time_went(base, tmp_path, capsys):
    """`rewind -v export` prints the seconds each stage was busy, summed over its threads."""
    from rewind.cli import main

    model, base_dir = base
    make_adapter("lora", model, tmp_path / "a")
    p = export.plan(export.ExportSpec(adapter=tmp_path / "a", base=base_dir, alpha=0.4, out=tmp_path / "out"))
    export.write(p, settings=BUSY)
    assert {"wall_s", "read_s", "job_s", "merge_s", "write_s", "hash_s", "write_wait_s"} <= p.profile.keys()
    assert 0 < p.profile["read_s"] < p.profile["job_s"] and p.profile["workers"] == BUSY.workers
    with pytest.raises(SystemExit) as done:
        main(["-v", "export", "--base", str(base_dir), "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "c")])
    assert done.value.code == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("export profile: "))
    assert json.loads(line.removeprefix("export profile: "))["workers"] == export.pipeline_settings(p).workers


def test_merges_wait_for_the_warm_up_and_its_failure_changes_nothing(base, tmp_path, monkeypatch):
    """The warm-up merges zeros first (on CUDA: the context and Triton's compile, once, while workers read); a
    failing one leaves the export as it was."""
    model, base_dir = base
    make_adapter("lora", model, tmp_path / "a")
    spec = dict(adapter=tmp_path / "a", base=base_dir, alpha=0.4)
    export.write(export.plan(export.ExportSpec(out=tmp_path / "plain", **spec)), settings=BUSY)
    real, calls, warmed = export._merged, [], []

    def merged(p, name, w0, device):
        calls.append((threading.current_thread().name, time.perf_counter()))
        if calls[-1][0] != "rewind-warm-up":
            return real(p, name, w0, device)
        time.sleep(0.2)  # a slow start: the workers read meanwhile, then wait
        warmed.append(time.perf_counter())
        raise RuntimeError("no device")

    monkeypatch.setattr(export, "_merged", merged)
    p = export.plan(export.ExportSpec(out=tmp_path / "warm", **spec))
    export.write(p, settings=BUSY)
    assert _files(tmp_path / "warm") == _files(tmp_path / "plain")
    assert [name for name, _ in calls].count("rewind-warm-up") == 1 and calls[0][0] == "rewind-warm-up"
    assert len(calls) == len(p.alphas) + 1 and all(t > warmed[0] for _, t in calls[1:])
    assert p.profile["device_wait_s"] > 0.1  # the workers' wait, apart from their merges


# In a fresh process: `rewind export` (a dry run), then a 64 MB tensor filled; prints the KB of it on huge pages.
_HUGE_PAGES_AFTER_EXPORT = """
import sys, torch
from rewind.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    assert not done.code, done.code
t = torch.ones(16 << 20)
with open("/proc/self/smaps") as f:
    blocks = f.read().split("\\n")
for i, line in enumerate(blocks):
    start, _, end = line.partition(" ")[0].partition("-")
    if end and int(start, 16) <= t.data_ptr() < int(end, 16):
        huge = next(b for b in blocks[i + 1 :] if b.startswith("AnonHugePages:"))
        print(int(huge.split()[1]))
"""


def test_export_fills_its_buffers_on_huge_pages(base, tmp_path):
    """The export command turns on torch's THP allocation before the process's first CPU tensor (torch reads it
    then, once); THP_MEM_ALLOC_ENABLE=0 still turns it off."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.is_file() or "[madvise]" not in thp.read_text():
        pytest.skip("needs transparent huge pages on madvise (with always, every large allocation gets them)")
    model, base_dir = base
    make_adapter("lora", model, tmp_path / "a")
    argv = ["export", "--base", str(base_dir), "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "o")]
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    huge = {}
    for setting in [None, "0"]:
        run_env = env if setting is None else {**env, "THP_MEM_ALLOC_ENABLE": setting}
        done = subprocess.run(
            [sys.executable, "-c", _HUGE_PAGES_AFTER_EXPORT, *argv, "--dry-run"],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        huge[setting] = int(done.stdout.split()[-1])
    assert huge["0"] == 0 and huge[None] > 0, huge
