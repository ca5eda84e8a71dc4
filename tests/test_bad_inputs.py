"""Issue 7, bad inputs: every one is a single `rewind: error: ...` line that names the problem and the fix, a non-zero
exit, no traceback (unless --debug), and nothing left behind (no out dir, no temp dirs).

Each case runs through `rewind.cli.main([...])`.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import tinysweep
import torch
from safetensors.torch import load_file, save_file
from tiny import make_adapter, make_full, tiny_base
from transformers import Qwen2Config, Qwen2ForCausalLM

from rewind.cli import main

W, C = "adapter_model.safetensors", "adapter_config.json"


@dataclass
class Case:
    id: str
    argv: list[str]  # placeholders: {base} {tbase} {tlora} {a} {b} {out} {tmp} {file}
    expect: tuple[str, ...]  # all in the error line
    code: int = 2
    adapter: str = ""  # world entry copied to {a} (then `damage`d)
    damage: Callable[[Path], None] | None = None
    base: str = ""  # world entry copied to {b} (then `base_damage`d)
    base_damage: Callable[[Path], None] | None = None
    setup: Callable | None = None  # (case_dir, monkeypatch) -> None, or a cleanup to call after the case
    prefix: str = "rewind: error: "
    may_leave: bool = False  # a sweep dir may stay (it resumes); `check` says what must hold then
    check: Callable[[Path], list[str]] | None = None


# --- damage ----------------------------------------------------------------------------------------------------


def truncate(a):
    (a / W).write_bytes((a / W).read_bytes()[:200])


def flip_header(a):
    data = bytearray((a / W).read_bytes())
    data[20] ^= 0xFF  # inside the JSON header: no longer UTF-8
    (a / W).write_bytes(bytes(data))


def huge_header(a):
    (a / W).write_bytes(struct.pack("<Q", 10**12) + b"{}")


def poison(value):
    def damage(a):
        tensors = load_file(a / W)
        next(iter(tensors.values()))[0, 0] = value
        save_file(tensors, a / W)

    return damage


def config(**changes):
    def damage(a):
        (a / C).write_text(json.dumps({**json.loads((a / C).read_text()), **changes}))

    return damage


def raw_config(text):
    def damage(a):
        (a / C).write_text(text)

    return damage


def inflate(a):
    """Finite in the adapter's fp32, but W0 + dW overflows an fp16 base."""
    tensors = load_file(a / W)
    save_file({k: t * 1e7 if "lora_B" in k else t for k, t in tensors.items()}, a / W)


def pickle_only(a):
    (a / W).unlink()
    (a / "adapter_model.bin").write_bytes(b"never unpickled")


def rank_mismatch(a):
    tensors = load_file(a / W)
    key = next(k for k in sorted(tensors) if "lora_A" in k)
    tensors[key] = tensors[key][:2].clone()
    save_file(tensors, a / W)


def hub_trained(a):
    """A LoRA saved with a task type (no auto_mapping) that names its base by hub id."""
    config(base_model_name_or_path="Qwen/Qwen2.5-0.5B", auto_mapping=None)(a)


def fake_hf_cache(case_dir, monkeypatch):
    cached = case_dir / "hub-config.json"
    cached.write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    monkeypatch.setattr(
        "huggingface_hub.try_to_load_from_cache",
        lambda repo, name, **kw: str(cached) if repo == "Qwen/Qwen2.5-0.5B" else None,
    )


def index_traversal(b):
    index = json.loads((b / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../outside.safetensors"
    (b / "model.safetensors.index.json").write_text(json.dumps(index))


def damaged_shard(b):
    shard = sorted(b.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])


def pickle_base(b):
    (b / "model.safetensors").unlink()
    (b / "pytorch_model.bin").write_bytes(b"never unpickled")


def no_tokenizer(b):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (b / name).unlink(missing_ok=True)


def no_chat_template(b):
    """A plain pretrained base: its tokenizer has no chat template."""
    (b / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((b / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (b / "tokenizer_config.json").write_text(json.dumps(config))


RECORD = json.dumps(
    {
        "run": "r",
        "point": "base@0",
        "path": "base",
        "alpha": 0.0,
        "split": "validation",
        "role": "target",
        "suite": "s",
        "task": "t",
        "score": 0.0,
        "part": [0, 1],
    }
)


def in_out(**texts):
    """Files (name -> text) in the sweep dir {out} before the command runs."""

    def setup(case_dir, monkeypatch):
        out = case_dir / "work" / "out"
        out.mkdir()
        for name, text in texts.items():
            (out / name.replace("_", ".")).write_text(text)

    return setup


def write_yaml(text):
    def setup(case_dir, monkeypatch):
        (case_dir / "recipe.yaml").write_text(text)

    return setup


def cuda_missing(case_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU box answers like this one


def disk_full(case_dir, monkeypatch):
    def write(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("rewind.tensorio.ShardWriter.write", write)


def results_disk_full(case_dir, monkeypatch):
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("results.jsonl"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def task_data_missing(case_dir, monkeypatch):
    """As if data/math_basic_arithmetic.*.jsonl.gz had been deleted (suite_utils has no data-dir hook to point
    elsewhere: see MISSING_DATA)."""
    real = gzip.open

    def open_(path, *args, **kwargs):
        if "math_basic_arithmetic" in str(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(gzip, "open", open_)


def small_disk(case_dir, monkeypatch):
    """A real full disk: a 128 KiB tmpfs at {tmp}/small (the tiny base's weights are ~500 KiB). Needs root."""
    disk = case_dir / "small"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    return lambda: subprocess.run(["umount", str(disk)], check=True)


def readonly_mount(case_dir, monkeypatch):
    """A real read-only filesystem: {tmp}/ro, a read-only bind mount of an empty dir. Needs root."""
    src, ro = case_dir / "ro-src", case_dir / "ro"
    src.mkdir()
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (needs root)")
    if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True).returncode:
        subprocess.run(["umount", str(ro)], check=True)
        pytest.skip("cannot remount read-only here")
    return lambda: subprocess.run(["umount", str(ro)], check=True)


def alias_dir(case_dir, monkeypatch):
    (case_dir / "alias").symlink_to(case_dir)  # {tmp}/alias/a is {a}


def init_copy(case_dir, monkeypatch):
    shutil.copytree(case_dir / "a", case_dir / "init")


def sweep_dir(truncate: str = ""):
    """{tmp}/sweep: a finished sweep of {b} and {a} (`truncate`: that file cut in half, as a full disk leaves it)."""

    def setup(case_dir, monkeypatch):
        d = case_dir / "sweep"
        d.mkdir()
        spec = {
            "base": str(case_dir / "b"),
            "adapter": str(case_dir / "a"),
            "init_adapter": None,
            "layers": None,
            "cayley_scale": "linear",
        }
        files = {
            "sweep.json": {"run": "r", "spec": spec, "paths": ["linear"], "method": "lora", "natural_path": "linear"},
            "summary.json": {"selected": {"key": "linear@0.5", "path": "linear", "alpha": 0.5}},
        }
        for name, record in files.items():
            text = json.dumps(record)
            (d / name).write_text(text[: len(text) // 2] if name == truncate else text)

    return setup


def unwritable_dir(case_dir: Path) -> Path:
    """A dir nobody can create files in. chmod 0o500 does not stop root: then /sys (read-only to root in a
    container), else a path under a regular file."""
    d = case_dir / "locked"
    d.mkdir()
    d.chmod(0o500)
    try:
        (d / "probe").touch()
    except OSError:
        return d
    (d / "probe").unlink()
    d.chmod(0o700)
    try:
        (Path("/sys") / ".rewind-probe").touch()
    except OSError:
        return Path("/sys")
    (Path("/sys") / ".rewind-probe").unlink()
    return case_dir / "file"


def valid_results(case_dir) -> list[str]:
    results = case_dir / "work" / "out" / "results.jsonl"
    if not results.is_file():
        return []
    try:
        for line in results.read_text().splitlines():
            json.loads(line)
    except json.JSONDecodeError as exc:
        return [f"results.jsonl is not valid JSONL after the failure: {exc}"]
    return []


EXPORT = ["export", "--base", "{base}", "--adapter", "{a}", "--out", "{out}"]
EXPORT_B = ["export", "--base", "{b}", "--adapter", "{a}", "--out"]  # then the --out


def sweep_argv(*extra, limit: int = 2) -> list[str]:
    """`rewind sweep` of the tiny chat base's LoRA into {out}, `extra` flags last (a repeated flag wins)."""
    return tinysweep.sweep_args(Path("{tbase}"), Path("{tlora}"), Path("{out}"), *extra, limit=limit)


EXPORT_FROM = ["export", "--from", "{out}", "--alpha", "0.5", "--out", "{tmp}/work/exported"]
SEARCH = [
    "search",
    "--base",
    "{tbase}",
    "--adapter",
    "{tlora}",
    "--out",
    "{out}",
    "--target",
    tinysweep.TARGET,
    "--general",
    tinysweep.GENERAL,
    "--device",
    "cpu",
    "--dtype",
    "fp32",
]
SWEEP_DIR = sweep_argv("--alphas", "0.5")  # resumes {out}
HUB_ONLY = "rewind-tests/not-in-any-cache"  # a hub id: offline, never found
RECIPE = ["base={tbase}", "preset=smollm2", "device=cpu", "data.generators=[basic_arithmetic]", "data.size=4"]

CASES = [
    # -- adapters of another base --------------------------------------------------------------------------------
    Case("shape", EXPORT, ("does not fit this base", "(64, 128) in the base but (32, 64)"), adapter="small_lora"),
    Case(
        "arch-same-shapes",
        EXPORT,
        ("trained on a Qwen2ForCausalLM model", "pass the base it was trained on"),
        adapter="qwen_lora",
    ),
    Case("arch-full-checkpoint", EXPORT, ("trained on a Qwen2ForCausalLM model",), adapter="qwen_full"),
    Case(
        "arch-hub-id",
        EXPORT,
        ("trained on a qwen2 model", "cached config of Qwen/Qwen2.5-0.5B"),
        adapter="lora",
        damage=hub_trained,
        setup=fake_hf_cache,
    ),
    Case(
        "arch-inspect",
        ["inspect", "--base", "{base}", "--adapter", "{a}"],
        ("trained on a Qwen2ForCausalLM",),
        adapter="qwen_lora",
    ),
    Case("missing-module", EXPORT, ("not in the base model",), adapter="deep_lora"),
    # -- damaged adapters ------------------------------------------------------------------------------------------
    Case(
        "peft-type",
        EXPORT,
        ("unsupported peft_type 'PREFIX_TUNING'", "rewind reads"),
        adapter="lora",
        damage=config(peft_type="PREFIX_TUNING"),
    ),
    Case("truncated", EXPORT, ("not a readable safetensors file",), adapter="lora", damage=truncate),
    Case(
        "corrupt-header",
        EXPORT,
        ("not a readable safetensors file", "invalid UTF-8"),
        adapter="lora",
        damage=flip_header,
    ),
    Case(
        "huge-header",
        ["inspect", "--base", "{base}", "--adapter", "{a}"],
        ("not a readable safetensors file",),
        adapter="lora",
        damage=huge_header,
    ),
    Case("nan", EXPORT, ("NaN/Inf", "the adapter is broken"), adapter="lora", damage=poison(float("nan"))),
    Case("inf-oft", EXPORT, ("NaN/Inf",), adapter="oft", damage=poison(float("inf"))),
    Case("config-json", EXPORT, ("unreadable JSON",), adapter="lora", damage=raw_config("{not json")),
    Case("config-list", EXPORT, ("expected a JSON object",), adapter="lora", damage=raw_config("[1, 2]")),
    Case("config-r-type", EXPORT, ("`r` is 'four'", "positive integer"), adapter="lora", damage=config(r="four")),
    Case("config-r-zero", EXPORT, ("`r` is 0",), adapter="lora", damage=config(r=0)),
    Case(
        "config-bad-regex",
        EXPORT,
        ("rank_pattern pattern '(q'", "not a valid regex"),
        adapter="lora",
        damage=config(rank_pattern={"(q": 2}),
    ),
    Case(
        "config-oft-terms",
        EXPORT,
        ("`num_cayley_neumann_terms` is 'x'",),
        adapter="oft",
        damage=config(num_cayley_neumann_terms="x"),
    ),
    Case(
        "factor-shapes",
        EXPORT,
        ("do not fit each other", "the adapter is broken"),
        adapter="lora",
        damage=rank_mismatch,
    ),
    Case("pickle-adapter", EXPORT, ("missing", "rewind reads no pickle files"), adapter="lora", damage=pickle_only),
    Case(
        "no-adapter",
        ["export", "--base", "{base}", "--adapter", "{tmp}/nope", "--out", "{out}"],
        ("--adapter", "no such directory"),
    ),
    Case(
        "init-adapter-missing",
        [*EXPORT, "--init-adapter", "{tmp}/nope"],
        ("--init-adapter", "no such directory"),
        adapter="lora",
    ),
    # -- diagnose and arena ----------------------------------------------------------------------------------------
    Case(
        "diagnose-shape",
        ["diagnose", "spectral", "--base", "{base}", "--adapter", "{a}", "--out", "{out}"],
        ("does not fit this base",),
        adapter="small_lora",
    ),
    Case(
        "diagnose-alpha",
        ["diagnose", "spectral", "--base", "{base}", "--adapter", "{a}", "--out", "{out}", "--alpha", "1.5"],
        ("outside [0, 1]", "--allow-extrapolation"),
        adapter="lora",
    ),
    Case(
        "diagnose-modules",
        ["diagnose", "spectral", "--base", "{base}", "--adapter", "{a}", "--out", "{out}", "--modules", "nonsense"],
        ("--modules nonsense", "matches no adapted matrix"),
        adapter="lora",
    ),
    Case(
        "diagnose-suite",
        ["diagnose", "csd", "--base", "{tbase}", "--adapter", "{tlora}", "--out", "{out}", "--target", "no_such_suite"],
        ("suite 'no_such_suite'",),
    ),
    Case(
        "diagnose-arch",
        ["diagnose", "activations", "--base", "{base}", "--adapter", "{a}", "--out", "{out}"],
        ("was trained on a Qwen2", "--base is a llama model"),
        adapter="qwen_lora",
    ),
    Case(
        "arena-no-sweep",
        ["arena", "{a}", "--base", "{base}", "--out", "{out}"],
        ("rewind sweep --adapter",),
        adapter="lora",
    ),
    # -- damaged bases ---------------------------------------------------------------------------------------------
    Case(
        "index-traversal",
        ["export", "--base", "{b}", "--adapter", "{a}", "--out", "{out}"],
        ("'../../outside.safetensors' is not a file name",),
        adapter="lora",
        base="sharded",
        base_damage=index_traversal,
    ),
    Case(
        "damaged-shard",
        ["inspect", "--base", "{b}", "--adapter", "{a}"],
        ("not a readable safetensors file", "re-download or re-save"),
        adapter="lora",
        base="sharded",
        base_damage=damaged_shard,
    ),
    Case(
        "pickle-base",
        tinysweep.sweep_args(Path("{b}"), Path("{tlora}"), Path("{out}")),
        ("cannot load", "safetensors weights only"),
        base="tbase",
        base_damage=pickle_base,
    ),
    Case(
        "no-tokenizer",
        tinysweep.sweep_args(Path("{b}"), Path("{tlora}"), Path("{out}")),
        ("no tokenizer there", "tokenizer.save_pretrained"),
        base="tbase",
        base_damage=no_tokenizer,
    ),
    # -- points, schedules, paths ----------------------------------------------------------------------------------
    Case(
        "alpha", [*EXPORT, "--alpha", "1.5"], ("alpha 1.5 is outside [0, 1]", "--allow-extrapolation"), adapter="lora"
    ),
    Case(
        "alpha-nan",
        [*EXPORT, "--alpha", "nan", "--allow-extrapolation"],
        ("alpha nan is not a finite number",),
        adapter="lora",
    ),
    Case(
        "layers-syntax",
        [*EXPORT, "--layers", "0.1,abc"],
        ("layer schedule '0.1,abc'", "give uniform, ramp"),
        adapter="lora",
    ),
    Case("layers-json-object", [*EXPORT, "--layers", '{{"a": 1}}'], ("layer schedule",), adapter="lora"),
    Case("layers-length", [*EXPORT, "--layers", "0.1,0.2"], ("has 2 alphas; the model has 3",), adapter="lora"),
    Case("layers-value", [*EXPORT, "--layers", "0.1,0.2,1.5"], ("alpha 1.5 is outside [0, 1]",), adapter="lora"),
    Case(
        "sweep-alphas",
        tinysweep.sweep_args(Path("{tbase}"), Path("{tlora}"), Path("{out}"), "--alphas", "0,2"),
        ("--alphas must lie in [0, 1]", "--allow-extrapolation"),
    ),
    Case(
        "sweep-layers-length",
        tinysweep.sweep_args(
            Path("{tbase}"), Path("{tlora}"), Path("{out}"), "--layers", "0.1,0.2,0.3", "--alphas", "0.5", limit=1
        ),
        ("has 3 alphas; the model has 2",),
    ),
    Case(
        "sweep-path",
        tinysweep.sweep_args(Path("{tbase}"), Path("{tlora}"), Path("{out}"), "--path", "cayley"),
        ("does not apply", "--path auto"),
    ),
    Case(
        "layers-bools",
        [*EXPORT, "--layers", "[true,false,true]"],
        ("layer schedule", "a list of numbers"),
        adapter="lora",
    ),
    Case(
        "sweep-layers-bools",
        sweep_argv("--layers", "[true,false]", "--alphas", "0.5"),
        ("layer schedule '[true,false]'",),
    ),
    # -- numbers: checked by click before anything loads -------------------------------------------------------------
    Case("sweep-limit-zero", sweep_argv(limit=0), ("--limit", "0 is not in the range x>=1")),
    Case("sweep-limit-negative", sweep_argv(limit=-3), ("--limit", "-3 is not in the range x>=1")),
    Case("sweep-batch-size", sweep_argv("--batch-size", "0"), ("--batch-size", "a positive number or auto")),
    Case("sweep-weight", sweep_argv("--weight", "1.5"), ("--weight", "1.5 is not in the range 0<=x<=1")),
    Case("sweep-tolerance-nan", sweep_argv("--tolerance", "nan"), ("--tolerance", "not a finite number")),
    Case("sweep-pass-k", sweep_argv("--pass-k", "1,0"), ("--pass-k '1,0'", "at least 1")),
    Case(
        "sweep-alphas-nan", sweep_argv("--alphas", "0,nan", "--allow-extrapolation"), ("--alphas must lie in [0, 1]",)
    ),
    Case("search-limit-zero", [*SEARCH, "--limit", "0"], ("--limit", "0 is not in the range x>=1")),
    Case("search-budget-zero", [*SEARCH, "--budget", "0"], ("--budget", "0 is not in the range x>=1")),
    Case("search-step-zero", [*SEARCH, "--step", "0"], ("--step", "0.0 is not in the range 0<x<=1")),
    Case("search-groups-zero", [*SEARCH, "--groups", "0"], ("--groups 0", "at least 1")),  # not after the sweep
    Case(
        "diagnose-limit-zero",
        ["diagnose", "csd", "--base", "{tbase}", "--adapter", "{tlora}", "--out", "{out}", "--limit", "0"],
        ("--limit", "0 is not in the range x>=1"),
    ),
    # -- chat template ---------------------------------------------------------------------------------------------
    Case(
        "chat-template-on-without-one",
        tinysweep.sweep_args(Path("{b}"), Path("{tlora}"), Path("{out}"), "--chat-template", "on", "--alphas", "0.5"),
        ("--chat-template on", "no chat template", "--chat-template off"),
        base="tbase",
        base_damage=no_chat_template,
    ),
    # -- a damaged sweep dir ---------------------------------------------------------------------------------------
    Case(
        "results-garbage-line",
        SWEEP_DIR,
        ("results.jsonl line 2: damaged", "delete that line"),
        setup=in_out(results_jsonl=f"{RECORD}\ngarbage\n{RECORD}\n"),
    ),
    Case(
        "results-cut-line",
        SWEEP_DIR,
        ("results.jsonl line 1: damaged",),
        setup=in_out(results_jsonl=f"{RECORD[:40]}\n{RECORD}\n"),
    ),
    Case(
        "results-not-a-record",
        SWEEP_DIR,
        ("results.jsonl line 2: damaged (not a results record)",),
        setup=in_out(results_jsonl=f"{RECORD}\n[1, 2]\n"),
    ),
    Case(
        "export-from-empty-sweep-json",
        EXPORT_FROM,
        ("sweep.json: unreadable JSON", "the sweep record is damaged"),
        setup=in_out(sweep_json=""),
    ),  # what a full disk left before sweep.json was written atomically
    Case(
        "export-from-summary-list",
        EXPORT_FROM,
        ("summary.json: expected a JSON object, got list",),
        setup=in_out(sweep_json='{"run": "r", "spec": {}}', summary_json="[]"),
    ),
    Case(
        "search-from-empty-sweep-json",
        ["search", "--out", "{out}"],
        ("sweep.json: unreadable JSON",),
        setup=in_out(sweep_json=""),
    ),
    # -- tasks -----------------------------------------------------------------------------------------------------
    Case(
        "unknown-suite",
        ["sweep", "--base", "{tbase}", "--adapter", "{tlora}", "--out", "{out}", "--target", "no_such_suite"],
        ("unknown suite 'no_such_suite'", "use one of"),
    ),
    Case("hub-task-offline", sweep_argv("--general", "hellaswag"), ("task hellaswag", "pass --online")),
    Case(
        "hub-base-offline",
        tinysweep.sweep_args(Path(HUB_ONLY), Path("{tlora}"), Path("{out}")),
        (f"--base {HUB_ONLY}", "pass --online"),
    ),
    Case(
        "export-hub-base-offline",
        ["export", "--base", HUB_ONLY, "--adapter", "{a}", "--out", "{out}"],
        (f"--base {HUB_ONLY}", "pass --online"),
        adapter="lora",
    ),
    Case(
        "task-data-missing",
        tinysweep.sweep_args(Path("{tbase}"), Path("{tlora}"), Path("{out}")),
        ("math_basic_arithmetic",),
        setup=task_data_missing,
    ),
    # -- where the output goes -------------------------------------------------------------------------------------
    Case(
        "out-not-empty",
        EXPORT,
        ("exists and is not empty", "--force"),
        adapter="lora",
        setup=lambda d, mp: ((d / "work" / "out").mkdir(), (d / "work" / "out" / "keep.txt").write_text("mine")),
    ),
    Case(
        "out-under-file",
        ["export", "--base", "{base}", "--adapter", "{a}", "--out", "{file}/out"],
        ("is a file, not a directory", "choose another --out"),
        adapter="lora",
    ),
    Case(
        "out-not-writable",
        ["export", "--base", "{base}", "--adapter", "{a}", "--out", "{locked}/out"],
        ("cannot write in", "choose another --out"),
        adapter="lora",
    ),
    Case(
        "out-on-readonly-fs",
        [*EXPORT_B, "{tmp}/ro/out"],
        ("--out", "Read-only file system", "choose another --out"),
        adapter="lora",
        base="base",
        setup=readonly_mount,
    ),
    Case(
        "sweep-out-on-readonly-fs",
        sweep_argv("--out", "{tmp}/ro/sweep"),
        ("Read-only file system",),
        setup=readonly_mount,
    ),
    Case(
        "disk-full",
        EXPORT,
        ("No space left on device", "nothing was written", "free space"),
        adapter="lora",
        setup=disk_full,
    ),
    Case(
        "disk-full-new-dirs",
        ["export", "--base", "{base}", "--adapter", "{a}", "--out", "{tmp}/work/new/dirs/out"],
        ("No space left on device",),
        adapter="lora",
        setup=disk_full,
    ),  # the dirs it made go again
    Case(
        "disk-full-tmpfs",
        [*EXPORT_B, "{tmp}/small/out"],
        ("--out", "No space left on device", "nothing was written", "free space on"),
        adapter="lora",
        base="base",
        setup=small_disk,
    ),  # a real full disk: safetensors raises its own SafetensorError, not OSError
    Case(
        "out-name-too-long",
        [*EXPORT_B, "{tmp}/work/" + "x" * 300],
        ("--out", "name too long", "shorter"),
        adapter="lora",
        base="base",
    ),
    Case(
        "out-is-adapter",
        [*EXPORT_B, "{a}", "--force"],
        ("--out", "is the --adapter dir", "not even with --force"),
        adapter="lora",
        base="base",
    ),
    Case("out-is-base", [*EXPORT_B, "{b}", "--force"], ("is the --base dir",), adapter="lora", base="base"),
    Case(
        "out-holds-inputs", [*EXPORT_B, "{tmp}", "--force"], ("contains the --base dir",), adapter="lora", base="base"
    ),
    Case(
        "out-inside-adapter", [*EXPORT_B, "{a}/merged"], ("lies inside the --adapter dir",), adapter="lora", base="base"
    ),
    Case(
        "out-symlink-to-adapter",
        [*EXPORT_B, "{tmp}/alias/a", "--force"],
        ("is the --adapter dir",),
        adapter="lora",
        base="base",
        setup=alias_dir,
    ),
    Case(
        "out-is-init-adapter",
        [*EXPORT_B, "{tmp}/init", "--init-adapter", "{tmp}/init", "--force"],
        ("is the --init-adapter dir",),
        adapter="lora",
        base="base",
        setup=init_copy,
    ),
    Case(
        "out-inside-sweep",
        ["export", "--from", "{tmp}/sweep", "--out", "{tmp}/sweep/merged"],
        ("lies inside the --from sweep dir",),
        adapter="lora",
        base="base",
        setup=sweep_dir(),
    ),
    Case(
        "from-truncated-summary",
        ["export", "--from", "{tmp}/sweep", "--out", "{out}"],
        ("summary.json", "unreadable JSON"),
        adapter="lora",
        base="base",
        setup=sweep_dir("summary.json"),
    ),
    Case(
        "from-truncated-sweep",
        ["export", "--from", "{tmp}/sweep", "--alpha", "0.5", "--out", "{out}"],
        ("sweep.json", "unreadable JSON"),
        adapter="lora",
        base="base",
        setup=sweep_dir("sweep.json"),
    ),
    Case(
        "train-out-is-base",
        ["train", "sft/full", "base={b}", *RECIPE[1:], "--out", "{b}"],
        ("is the base dir",),
        base="tbase",
    ),
    Case(
        "fp16-overflow",
        [*EXPORT_B, "{out}"],
        ("non-finite", "float16", "--dtype bf16"),
        adapter="lora",
        damage=inflate,
        base="fp16",
    ),
    Case(
        "sweep-out-under-file",
        tinysweep.sweep_args(Path("{tbase}"), Path("{tlora}"), Path("{file}/out")),
        ("--out", "choose another --out"),
    ),
    Case(
        "sweep-disk-full",
        tinysweep.sweep_args(Path("{tbase}"), Path("{tlora}"), Path("{out}"), "--alphas", "0.5", limit=1),
        ("No space left on device", "rerun"),
        setup=results_disk_full,
        may_leave=True,
        check=valid_results,
    ),
    Case(
        "train-data",
        ["train", "sft/lora", *RECIPE[:4], "data.generators=[no_such_generator]", "--out", "{out}"],
        ("cannot make 'no_such_generator'",),
    ),  # fails after recipe.yaml was written: the run dir goes again
    Case(
        "train-out-under-file",
        ["train", "sft/lora", *RECIPE, "--out", "{file}/run"],
        ("cannot write there", "choose another --out"),
    ),
    # -- devices ---------------------------------------------------------------------------------------------------
    Case(
        "export-cuda",
        [*EXPORT, "--device", "cuda"],
        ("no CUDA GPU", "--device cpu"),
        adapter="lora",
        setup=cuda_missing,
    ),
    Case("export-device-typo", [*EXPORT, "--device", "gpu"], ("--device gpu: not a device",), adapter="lora"),
    Case(
        "sweep-cuda",
        [
            "sweep",
            "--base",
            "{tbase}",
            "--adapter",
            "{tlora}",
            "--out",
            "{out}",
            "--device",
            "cuda",
            "--limit",
            "1",
            "--target",
            tinysweep.TARGET,
            "--general",
            tinysweep.GENERAL,
        ],
        ("no CUDA GPU", "--device cpu"),
        setup=cuda_missing,
    ),
    Case("sweep-mps", sweep_argv("--device", "mps"), ("--device mps", "cannot use mps devices", "--device cpu")),
    Case("export-mps", [*EXPORT, "--device", "mps"], ("--device mps", "cannot use mps devices"), adapter="lora"),
    Case(
        "sweep-cuda-bf16",
        [
            "sweep",
            "--base",
            "{tbase}",
            "--adapter",
            "{tlora}",
            "--out",
            "{out}",
            "--device",
            "cuda",
            "--dtype",
            "bf16",
            "--target",
            tinysweep.TARGET,
            "--general",
            tinysweep.GENERAL,
        ],
        ("no CUDA GPU", "--device cpu"),
        setup=cuda_missing,
    ),
    Case(
        "train-cuda",
        ["train", "sft/lora", *RECIPE[:2], "device=cuda", *RECIPE[3:], "--out", "{out}"],
        ("no CUDA GPU", "--device cpu"),
        setup=cuda_missing,
    ),
    # -- recipes ---------------------------------------------------------------------------------------------------
    Case("recipe-unknown-key", ["train", "sft/lora", "foo=1", "--out", "{out}"], ("unknown key 'foo'", "known:")),
    Case(
        "recipe-unknown-nested",
        ["train", "sft/lora", "trainer.nonsense=1", "--out", "{out}"],
        ("trainer.nonsense: not a field of SFTConfig",),
    ),
    Case(
        "recipe-int-type",
        ["train", "sft/lora", "save_steps=abc", "--out", "{out}"],
        ("save_steps: expected an integer, got 'abc'",),
    ),
    Case(
        "recipe-float-type",
        ["train", "sft/lora", "trainer.learning_rate=fast", "--out", "{out}"],
        ("trainer.learning_rate: expected a number",),
    ),
    Case("recipe-section-type", ["train", "sft/lora", "data=5", "--out", "{out}"], ("data: expected a section",)),
    Case(
        "recipe-file-keys",
        ["train", "{tmp}/recipe.yaml", "--out", "{out}"],
        ("unknown key 'epochs'",),
        setup=write_yaml("kind: sft\nmethod: lora\nepochs: 3\n"),
    ),
    Case(
        "recipe-yaml",
        ["train", "{tmp}/recipe.yaml", "--out", "{out}"],
        ("unreadable YAML",),
        setup=write_yaml("kind: [sft\n"),
    ),
    Case("recipe-missing", ["train", "{tmp}/nope.yaml", "--out", "{out}"], ("no such file",)),
    Case("recipe-preset-traversal", ["train", "sft/lora", "preset=../../../tmp/x", "--out", "{out}"], ("not a path",)),
    Case("click-usage", [*EXPORT, "--format", "zip"], ("--format", "zip"), adapter="lora"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    base = tiny_base()
    base.save_pretrained(root / "base")
    base.save_pretrained(root / "sharded", max_shard_size="200KB")
    tiny_base().half().save_pretrained(root / "fp16")
    make_adapter("lora", base, root / "lora")
    make_adapter("oft", base, root / "oft")
    small = type(base)(type(base.config)(**{**base.config.to_dict(), "hidden_size": 32, "intermediate_size": 64}))
    make_adapter("lora", small, root / "small_lora")
    make_adapter("lora", tiny_base(layers=5), root / "deep_lora")
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(
        Qwen2Config(
            **{
                k: base.config.to_dict()[k]
                for k in (
                    "vocab_size",
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "max_position_embeddings",
                    "tie_word_embeddings",
                )
            }
        )
    )
    make_adapter("lora", qwen, root / "qwen_lora")  # same tensor names and shapes as a Llama LoRA
    make_full(qwen, root / "qwen_full")
    tinysweep.make(root)
    return root


def _snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(d.rglob("*"))
    }


def _inputs(case_dir: Path) -> dict[str, str]:
    """Everything of the case outside work/ (its adapter, base, sweep dir, ...): no case may change it."""
    return {k: v for k, v in _snapshot(case_dir).items() if k != "work" and not k.startswith("work/")}


def _run(argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


def _problems(case: Case, code, err: str) -> list[tuple[str, str]]:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("rewind:")]
    noise = [line for line in lines if not line.startswith("rewind:") and "%|" not in line]  # progress bars pass
    found = []
    if code != case.code:
        found.append(("message", f"exit code {code}, expected {case.code}"))
    if "Traceback" in err:
        found.append(("message", "a traceback without --debug"))
    if len(ours) != 1 or noise:
        found.append(("message", f"not one line: {lines}"))
    elif not ours[0].startswith(case.prefix) or not all(e in ours[0] for e in case.expect):
        found.append(("message", f"{ours[0]!r} lacks {case.prefix!r} + {case.expect}"))
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world, tmp_path, capsys, monkeypatch, request):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "file").write_text("a regular file")
    where = {
        "base": world / "base",
        "tbase": world / "tbase",
        "tlora": world / "tlora",
        "tmp": tmp_path,
        "out": work / "out",
        "file": tmp_path / "file",
        "a": tmp_path / "a",
        "b": tmp_path / "b",
    }
    if case.adapter:
        shutil.copytree(world / case.adapter, where["a"])
        if case.damage:
            case.damage(where["a"])
    if case.base:
        shutil.copytree(world / case.base, where["b"])
        if case.base_damage:
            case.base_damage(where["b"])
    if "{locked}" in " ".join(case.argv):
        where["locked"] = unwritable_dir(tmp_path)
    if case.setup and callable(cleanup := case.setup(tmp_path, monkeypatch)):
        request.addfinalizer(cleanup)
    before, inputs = _snapshot(work), _inputs(tmp_path)
    argv = [str(arg).format(**where) for arg in case.argv]

    code, err = _run(argv, capsys)

    problems = _problems(case, code, err)
    if not case.may_leave and _snapshot(work) != before:
        problems.append(("leftover", f"left behind in {work}: {sorted(set(_snapshot(work)) ^ set(before))}"))
    if _inputs(tmp_path) != inputs:
        problems.append(("inputs", f"changed outside {work}: {sorted(set(_inputs(tmp_path)) ^ set(inputs))}"))
    problems += [("leftover", p) for p in (case.check(tmp_path) if case.check else [])]
    assert not problems, f"{argv}\n{err}\n{problems}"


def test_debug_shows_the_traceback(world, tmp_path, capsys):
    argv = [
        "--debug",
        "export",
        "--base",
        str(world / "base"),
        "--adapter",
        str(world / "small_lora"),
        "--out",
        str(tmp_path / "out"),
    ]
    code, err = _run(argv, capsys)
    assert code == 2 and "Traceback (most recent call last)" in err and "RewindError" in err
    assert err.strip().splitlines()[-1].startswith("rewind: error: adapter does not fit this base")
    assert not (tmp_path / "out").exists()


def test_matrix_covers_every_command():
    commands = {c.argv[0] for c in CASES}
    assert {"train", "sweep", "export", "inspect"} <= commands and len(CASES) >= 20


# --- a real full disk ------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (a tmpfs: needs root), so the disk-full errors are the kernel's, not a mock's."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path, free_blocks: int) -> None:
    """Fill `disk` up, then free `free_blocks` blocks (tmpfs allocates whole pages)."""
    filler, block = disk / "filler", os.statvfs(disk).f_bsize
    with open(filler, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - free_blocks * block))


def damaged_files(out: Path) -> list[str]:
    """Every JSON file whole, results.jsonl valid JSONL, no temp file left behind."""
    found = [p.name for p in out.iterdir() if ".tmp-" in p.name] if out.is_dir() else []
    for name in ("sweep.json", "summary.json", "search.json"):
        try:
            json.loads((out / name).read_text()) if (out / name).exists() else None
        except json.JSONDecodeError:
            found.append(f"{name} ({(out / name).stat().st_size} bytes)")
    return found + valid_results(out.parent.parent)  # out is <disk>/work/out


def test_sweep_on_a_full_disk_fails_cleanly_and_resumes(world, small_disk, capsys):
    """Each rerun gets one more free block than its files take: the failure moves on from sweep.json through the
    items and results to the plot, each a one-line error naming the file, every file whole; with space the sweep
    finishes."""
    out = small_disk / "work" / "out"
    argv = tinysweep.sweep_args(world / "tbase", world / "tlora", out, "--alphas", "0,1", limit=1)
    named = []
    for free in (0, 1, 1, 1, 1, 1):
        fill(small_disk, free)
        code, err = _run(argv, capsys)
        ours = [line for line in err.splitlines() if line.startswith("rewind:")]  # lm-eval's chatter may pass
        assert code == 2 and len(ours) == 1 and "Traceback" not in err, err
        assert ours[0].startswith("rewind: error: ") and "No space left on device" in ours[0], ours
        assert "rerun the same command" in ours[0] and not damaged_files(out), (ours, damaged_files(out))
        files = ("sweep.json", "items.jsonl", "results.jsonl", "summary.json", "pareto.png")
        named.append(next(n for n in files if n in err))
        if free == 0:
            assert named == ["sweep.json"] and not (out / "sweep.json").exists()  # not a 0-byte one
        (small_disk / "filler").unlink()
        if named[-1] == "pareto.png":
            break
    assert "items.jsonl" in named and named[-1] == "pareto.png", named
    code, err = _run(argv, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == len({(r["point"], r["split"], r["task"]) for r in records}) == 8  # nothing twice
    assert json.loads((out / "summary.json").read_text())["selected"]["test"] is not None


def test_sweep_on_a_base_without_chat_template_uses_plain_prompts(world, tmp_path, capsys):
    shutil.copytree(world / "tbase", tmp_path / "plain")
    no_chat_template(tmp_path / "plain")
    out = tmp_path / "out"
    code, err = _run(tinysweep.sweep_args(tmp_path / "plain", world / "tlora", out, "--alphas", "0,1", limit=1), capsys)
    notes = [line for line in err.splitlines() if line.startswith("rewind:")]
    assert code == 0 and len(notes) == 1 and notes[0].startswith("rewind: note: "), err
    assert "no chat template" in notes[0] and "--chat-template off" in notes[0]
    assert json.loads((out / "sweep.json").read_text())["chat_template"] is False
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records and not any(r["chat_template"] for r in records)
    with_template = tinysweep.sweep_args(
        world / "tbase", world / "tlora", tmp_path / "chat", "--alphas", "0,1", limit=1
    )
    code, err = _run(with_template, capsys)
    records = [json.loads(line) for line in (tmp_path / "chat" / "results.jsonl").read_text().splitlines()]
    assert code == 0 and "rewind: note" not in err
    assert {r["task"] for r in records if r["chat_template"]} == {tinysweep.TARGET}  # the task that asks for it
    assert records[0]["run"] != json.loads((out / "sweep.json").read_text())["run"]  # other prompts, other run
