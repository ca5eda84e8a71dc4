"""Write a point of a path to disk: a merged HF checkpoint (default) or, where that is exact, a peft adapter.

An `ExportSpec` says what to write; `plan` checks it (the base and the point through `checkpoint.Plan`, the output
dir through outdir.py) and decides every tensor's alpha, so `--dry-run` shows the plan. Writing is a pipeline
(pipeline.py): worker threads read and merge tensor by tensor while writer threads write the finished ones into
several shards at once, with the bytes in flight bounded (peak memory under one shard plus the adapter), into a
temporary dir next to `out` that is renamed into place only when complete: no half checkpoint is ever visible at
`out` (outdir.py: `out` never touches an input, and a killed export's temporary dir goes at the next export there).
The files are byte-identical to safetensors' save_file of the same tensors (tensorio.py). On a device, a thread
starts it (and compiles the path's kernels on a small tensor of zeros) while the first tensors are read.

Every tensor rewind computes or converts is checked finite as it is written. `dtype` (--dtype) writes the point in
another dtype: merged in fp32 and rounded once.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import math
import os
import re
import shutil
import threading
import time
from concurrent.futures import Future
from dataclasses import KW_ONLY, dataclass, fields, replace
from functools import cached_property, partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import __version__, adapters, methods, models, outdir, pipeline, tensorio
from .checkpoint import BaseTensors, Finetune, Plan
from .errors import RewindError
from .updates.full import Replace

log = logging.getLogger(__name__)

MERGED, ADAPTER = "merged", "adapter"
_NOT_COPIED = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".gguf")


@dataclass(frozen=True)
class ExportSpec(Finetune):
    """`rewind export`'s inputs: a finetune's point (the fields of `checkpoint.Finetune`), and where and how it is
    written."""

    _: KW_ONLY
    out: str | Path  # the output dir: absent or empty (or `force`); never an input, nor inside or around one
    fmt: str = MERGED  # merged: an HF checkpoint; adapter: a peft adapter moved along its natural path (where exact)
    force: bool = False  # replace a non-empty `out`
    dtype: str | None = None  # bf16, fp16, fp32; None or auto: the base's (merged) or the adapter's own (adapter)
    sweep_dir: str | Path | None = None  # the sweep the inputs came from (--from), which `out` spares like them

    @classmethod
    def at(cls, point: Finetune, **where) -> ExportSpec:
        """`point` written as `where` (the fields below) says."""
        return cls(**{f.name: getattr(point, f.name) for f in fields(Finetune)}, **where)

    def __post_init__(self):
        if self.fmt not in (MERGED, ADAPTER):
            raise RewindError(f"--format {self.fmt}: choose {MERGED} or {ADAPTER}")
        if self.dtype not in (None, "auto"):
            models.torch_dtype(self.dtype)  # an unknown name fails here, before anything is read


@dataclass
class ExportPlan(Plan):
    """A point planned for writing: `finetune` is its ExportSpec."""

    verified: float | None = None  # after write(verify=True): max |logit difference| reloaded vs in memory
    profile: dict | None = None  # after write: where the time went (`_profile`)

    @property
    def spec(self) -> ExportSpec:
        return self.finetune

    @property
    def out(self) -> Path:
        return Path(self.spec.out)

    @property
    def fmt(self) -> str:
        return self.spec.fmt

    @cached_property
    def dtype(self) -> torch.dtype | None:
        """The dtype written; None: the base's (merged) or the adapter's own (adapter)."""
        return None if self.spec.dtype in (None, "auto") else models.torch_dtype(self.spec.dtype)

    def summary(self) -> str:
        dtype = f" as {str(self.dtype).removeprefix('torch.')}" if self.dtype is not None else ""
        lines = [
            f"export {self.fmt} {self.point.describe()}{dtype} -> {self.out}",
            f"  base     {self.base} ({self.base_dir})",
            f"  adapter  {self.adapter} [{self.update.method.name}, sha256 {self.update.sha256[:12]}]",
            f"  tensors  {len(self.alphas)} updated",
        ]
        if self.fmt == MERGED:
            lines.append(f"  shards   {len(self.shards)}: " + ", ".join(s.name for s in self.shards))
        layer_alphas = self.layer_alphas()
        if len(set(layer_alphas.values())) > 1:
            lines.append("  layers   " + " ".join(f"{a:.3g}" for a in layer_alphas.values()))
        return "\n".join(lines)


def plan(spec: ExportSpec) -> ExportPlan:
    """Check every input, the output dir included, and decide every tensor's alpha; touches nothing on disk."""
    base_dir = models.local_dir(spec.base)
    out = Path(spec.out)
    outdir.check_spares_inputs(
        out,
        {
            "--base": base_dir,
            "--adapter": spec.adapter,
            "--init-adapter": spec.init_adapter,
            "--from sweep": spec.sweep_dir,
        },
    )
    outdir.check_out(out, spec.force)
    result = ExportPlan.of(spec, BaseTensors(base_dir))
    if spec.fmt == ADAPTER:
        _check_adapter_format(result)
    return result


def _check_adapter_format(p: ExportPlan) -> None:
    method = p.update.method
    if method.kind.scale is None:
        raise RewindError(
            f"--format adapter is not exact for {method.name} ({method.kind.no_adapter}): use --format merged"
        )
    if p.point.path != method.natural_path:
        raise RewindError(
            f"--format adapter writes {method.name}'s own path ({method.natural_path}), not "
            f"{p.point.path}: use --format merged"
        )
    if methods.residual_init(p.update.config, p.adapter):
        raise RewindError(
            "--format adapter: this adapter needs a residual base; convert it first (peft's "
            "path_initial_model_for_weight_conversion) or use --format merged"
        )
    if method.kind.check_scale is not None:
        for name, delta in p.update.deltas.items():
            if not isinstance(delta, Replace):  # modules_to_save: interpolated, always exact
                method.kind.check_scale(name, delta, p.alphas[name], cayley_scale=p.point.cayley_scale)


def write(p: ExportPlan, device: str = "cpu", verify: bool = False, settings: pipeline.Settings | None = None) -> Path:
    """Carry out a plan. Returns the output dir. `settings`: the pipeline's threads and bytes in flight (default:
    `pipeline_settings`).

    `verify`: before the result is moved into place, reload it (transformers for a merged checkpoint, peft for an
    adapter) and compare its logits on a fixed prompt with the in-memory model at the same point (`engine.attach`
    on a fresh base load); a difference beyond the dtype's tolerance is a RewindError and nothing is written. The
    max |difference| is kept in `p.verified` and in the model card.
    """
    from safetensors import SafetensorError

    device = models.pick_device(device)
    parent = p.out.resolve().parent
    created = [d for d in (parent, *parent.parents) if not d.exists()]  # deepest first: removed again on failure
    try:
        parent.mkdir(parents=True, exist_ok=True)
        scratch = outdir.Scratch(parent, p.out.name)
    except OSError as exc:
        _remove_empty(created)
        raise RewindError(f"--out {p.out}: cannot write in {parent} ({exc.strerror}); choose another --out") from exc
    try:
        with scratch:
            tmp = scratch.path
            settings = settings or pipeline_settings(p)
            busy, start = tensorio.Busy(), time.perf_counter()
            if p.fmt == MERGED:
                files = _write_merged(p, tmp, device, settings, busy)
            else:
                files = _write_adapter(p, tmp, settings, busy)
            p.profile = _profile(settings, busy, time.perf_counter() - start)
            if verify:
                p.verified = verify_export(p, tmp, device)
            (tmp / "README.md").write_text(model_card(p, files))
            _default_permissions(tmp)
            scratch.publish(p.out)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error, not OSError
        _remove_empty(created)
        if not isinstance(exc, OSError) and not _IO_ERROR.search(str(exc)):
            raise
        raise RewindError(
            f"--out {p.out}: writing failed ({_reason(exc)}); nothing was written: free space on "
            f"{_mount_point(parent)} or choose another --out"
        ) from exc
    except BaseException:
        _remove_empty(created)
        raise
    return p.out


def pipeline_settings(p: ExportPlan) -> pipeline.Settings:
    """Threads by the cores; half the largest shard in flight (64 MiB at least). A job is charged what it holds
    (`_merged_lane`), so with the workers' scratch buffers (`_scratch`: 8 x 136 MB on the 7B shape) peak memory
    stays under one shard + the adapter, the rest of the 1.3x bound left to the interpreter (0.65 GB with CUDA on the
    H200). Half a shard still queues more finished tensors than three quarters did while a finished merge was
    charged twice its bytes."""
    cores = os.cpu_count() or 1
    largest = max(shard.stat().st_size for shard in p.shards)
    return pipeline.Settings(
        workers=min(8, max(2, cores)),
        files_at_once=min(4, max(2, cores // 2)),
        in_flight=max(64 << 20, largest // 2),
    )


def _profile(settings: pipeline.Settings, busy: tensorio.Busy, wall: float) -> dict:
    """Where a write's time went: its wall seconds, and each stage's seconds summed over the threads that ran it
    (job = read + device_wait, for the warm-up, + merge; `write_wait`: writers idle)."""
    seconds = dict(busy.seconds)
    if "job" in seconds:
        seconds["merge"] = seconds["job"] - seconds.get("read", 0.0) - seconds.get("device_wait", 0.0)
    return {
        "wall_s": round(wall, 3),
        **{f"{stage}_s": round(s, 3) for stage, s in sorted(seconds.items())},
        "workers": settings.workers,
        "files_at_once": settings.files_at_once,
        "in_flight": settings.in_flight,
    }


# safetensors' words for an OS error: "I/O error: No space left on device (os error 28)" (0.6+), or
# `IoError(Os { ..., message: "No space left on device" })` in older releases
_IO_ERROR = re.compile(r'I/O error: (.*?)(?: \(os error \d+\))?$|IoError\(.*message: "([^"]*)"')


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem `path` is on (or would be on): the disk to free."""
    while not os.path.ismount(path):
        path = path.parent
    return path


def _reason(exc: Exception) -> str:
    """The OS's words for a write failure."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    found = _IO_ERROR.search(str(exc).splitlines()[0] if str(exc) else "")
    return (found.group(1) or found.group(2)) if found else str(exc)


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


# Max |logit difference| allowed by verify, relative to max(1, max |logit|): an export reloads to the in-memory
# model bit for bit through the same path code, so these only absorb kernel and (adapter format) peft-merge rounding.
VERIFY_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def verify_prompt(vocab_size: int, length: int = 16) -> torch.Tensor:
    """A fixed prompt of token ids spread over the vocabulary (no tokenizer needed)."""
    return torch.tensor([[(7919 * i + 13) % vocab_size for i in range(length)]])


def verify_export(p: ExportPlan, written: Path, device: str = "cpu") -> float:
    """Max |logits(reloaded export) - logits(in-memory model at p.point)| on `verify_prompt`; RewindError past the
    dtype's tolerance. The two models are loaded one after the other (peak: one model plus its updated tensors)."""
    from transformers import AutoModelForCausalLM

    from .engine import attach

    # The in-memory reference in the written dtype (a merged --dtype export); an adapter leaves the base as it is.
    base_dtype = p.dtype if p.fmt == MERGED and p.dtype is not None else "auto"

    def fresh_base():
        return (
            AutoModelForCausalLM.from_pretrained(p.base_dir, dtype=base_dtype, use_safetensors=True).to(device).eval()
        )

    def run(model) -> torch.Tensor:
        with torch.no_grad():
            ids = verify_prompt(model.config.vocab_size).to(model.device)
            return model(input_ids=ids).logits.float().cpu()

    if p.fmt == MERGED:
        reloaded = AutoModelForCausalLM.from_pretrained(written, dtype="auto", use_safetensors=True).to(device).eval()
    else:
        from peft import PeftModel

        reloaded = PeftModel.from_pretrained(fresh_base(), written).merge_and_unload().eval()
    dtype = next(reloaded.parameters()).dtype
    if p.dtype is not None and VERIFY_TOLERANCE.get(p.dtype, 0) > VERIFY_TOLERANCE.get(dtype, 0):
        dtype = p.dtype  # an adapter written in a coarser dtype than the model it serves
    got = run(reloaded)
    del reloaded
    rw = attach(fresh_base(), p.adapter, p.point.path, p.init_adapter, p.point.cayley_scale)
    rw.set(p.point.alpha, p.point.schedule, p.allow_extrapolation)
    want = run(rw.model)
    del rw
    diff = float((got - want).abs().max())
    tolerance = VERIFY_TOLERANCE.get(dtype, 1e-2) * max(1.0, float(want.abs().max()))
    if not diff <= tolerance:  # NaN fails too
        raise RewindError(
            f"verify: the written {p.fmt} checkpoint's logits differ from the in-memory model at "
            f"{p.point.describe()} by {diff:.3g} (tolerance {tolerance:.3g} for {dtype}); nothing was "
            f"written to {p.out}: rerun with --debug and report it"
        )
    return diff


def export(base, adapter, out, *, device: str = "cpu", verify: bool = False, **options) -> Path:
    """Plan and write in one call (the notebook form of `rewind export`); `options`: ExportSpec's other fields."""
    return write(plan(ExportSpec(adapter=adapter, base=base, out=out, **options)), device, verify)


def _write_merged(
    p: ExportPlan, tmp: Path, device: str, settings: pipeline.Settings, busy: tensorio.Busy
) -> dict[str, str]:
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(tensorio.ShardReader(shard, busy)) for shard in p.shards]
        lanes, jobs, warm = [], {}, Future()
        for reader in readers:
            lane, lane_jobs = _merged_lane(p, reader, tmp, device, warm)
            lanes.append(lane)
            jobs.update(lane_jobs)
        _warm_up(p, readers, device, busy, warm)  # after the layouts: no other thread imports while Triton does
        # `with`: a failure mid-write closes the bar, so the error line starts a line of its own
        with tqdm(total=len(jobs), desc="export", unit="tensor", leave=False) as bar:
            sums, _ = pipeline.run(lanes, jobs, settings, bar.update, busy)
    checksums = {lane.path.name: digest for lane, digest in zip(lanes, sums)}
    for extra in sorted(p.base_dir.iterdir()):
        if extra.is_file() and not extra.name.endswith(_NOT_COPIED) and extra.name != "README.md":
            shutil.copy2(extra, tmp / extra.name)
            checksums[extra.name] = adapters.sha256(tmp / extra.name)
    if p.dtype is not None:
        _set_config_dtype(tmp / "config.json", p.dtype)
        checksums["config.json"] = adapters.sha256(tmp / "config.json")
    return checksums


def _merged_lane(p: ExportPlan, reader: tensorio.ShardReader, tmp: Path, device: str, warm: Future):
    """One output shard: its layout (save_file's for the same tensors) and a job per tensor, costed in the bytes it
    holds: what it writes, until written, and while it runs what it computes in (transient): a converted tensor's
    read, on CPU a merge's fp32 copy and result. A merge reads W0 into its worker's scratch buffer, outside the
    budget (`pipeline_settings`). Merges wait for `warm` (`_warm_up`)."""
    jobs, specs = {}, {}
    on_cpu = torch.device(device).type == "cpu"
    for name, entry in reader.entries.items():
        dtype, numel = entry.torch_dtype, math.prod(entry.shape)
        if name in p.alphas:
            out, make = p.dtype or dtype, partial(_moved, p, reader, name, device, warm)
            transient = 8 * numel if on_cpu else 0
        elif p.dtype is not None and dtype.is_floating_point and dtype != p.dtype:
            out, make, transient = p.dtype, partial(_converted, p, reader, name), entry.nbytes
        else:  # untouched: its bytes as they are
            out, make, transient = dtype, partial(_kept, reader, name), 0
        specs[name] = (out, entry.shape)
        jobs[name] = pipeline.Job(make, numel * out.itemsize + transient, transient)
    header, names = tensorio.layout(specs)
    return pipeline.Lane(tmp / reader.path.name, header, names), jobs


def _moved(
    p: ExportPlan, reader: tensorio.ShardReader, name: str, device: str, warm: Future
) -> dict[str, torch.Tensor]:
    """W(alpha) of one updated tensor, on the CPU, finite. W0 is read into the worker's scratch buffer: the merge
    writes a new tensor, and the buffer is free again once W0 is on the device or converted."""
    w0 = reader.read(name, _scratch(reader.entries[name].nbytes))
    with reader.busy.timing("device_wait"):
        warm.result()  # read first: reading overlaps the device's start
    with _stream(device):
        return {name: _finite(p, name, _merged(p, name, w0, device)).cpu()}


_SCRATCH = threading.local()


def _scratch(nbytes: int) -> torch.Tensor:
    """This thread's buffer for the W0s it reads, kept from job to job (one per worker, the size of the largest W0):
    a fresh allocation over 32 MB is new pages from the kernel, faulted in and zeroed as they are read into, about
    6x slower than memory already mapped (a 7B MLP matrix, 136 MB: 1.4-1.6 against 8.3-9.4 GB/s on a 2-core VM)."""
    if getattr(_SCRATCH, "buffer", None) is None or _SCRATCH.buffer.numel() < nbytes:
        _SCRATCH.buffer = None  # freed before its successor is allocated
        _SCRATCH.buffer = torch.empty(nbytes, dtype=torch.uint8)
    return _SCRATCH.buffer[:nbytes]


def _merged(p: ExportPlan, name: str, w0: torch.Tensor, device: str) -> torch.Tensor:
    """W(alpha) of one updated tensor from its W0, on `device`. With --dtype: computed in fp32, rounded once."""
    w0 = w0.to(device)
    if p.dtype is not None:
        w0 = w0.float()  # the path computes in w0's dtype and rounds once into `p.dtype`
    return p.moved(name, w0, p.dtype)


def start_device(device: str) -> Future:
    """Start `device` in a thread (a CUDA context takes about a second), so that it overlaps planning and reading;
    the CLI calls this before it plans. Once per device; a no-op off CUDA. The future's result: the seconds it took
    (None: it failed, and the first job meets the error)."""
    if torch.device(device).type != "cuda":
        done = Future()
        done.set_result(0.0)
        return done
    return _start_cuda(device)


@functools.cache
def _start_cuda(device: str) -> Future:
    return _in_thread(lambda: torch.zeros(1, device=device), "rewind-device", Future())


def _warm_up(p: ExportPlan, readers: list[tensorio.ShardReader], device: str, busy: tensorio.Busy, done: Future):
    """Once the device has started, merge zeros shaped like the smallest updated tensor, in a thread: the path's
    kernels are compiled (Triton, imported on first use, compiles them) once, while the workers read, rather than by
    every worker at once in the first merges. Timing only: `done` gets the seconds it took (None: it failed), its
    result is discarded and any error left for the jobs to meet."""
    updated = [(name, e) for r in readers for name, e in r.entries.items() if name in p.alphas]
    started = start_device(device)
    if not updated:
        done.set_result(0.0)
        return
    name, entry = min(updated, key=lambda item: item[1].nbytes)

    def merge_zeros() -> None:
        if (seconds := started.result()) is not None:
            busy.add("device_start", seconds)
        with busy.timing("warm_up"), _stream(device):
            _merged(p, name, torch.zeros(entry.shape, dtype=entry.torch_dtype), device)
            if torch.device(device).type == "cuda":
                torch.cuda.current_stream(device).synchronize()  # its kernels compiled and run

    _in_thread(merge_zeros, "rewind-warm-up", done)


def _in_thread(work, name: str, done: Future) -> Future:
    """Run `work()` in a thread of its own; `done`'s result is the seconds it took, or None if it raised. Not a
    daemon: an export that fails early still lets it finish before the interpreter exits."""

    def run() -> None:
        start, seconds = time.perf_counter(), None
        try:
            work()
            seconds = time.perf_counter() - start
        except Exception:  # timing only: the jobs that need the device meet the same error themselves
            log.debug("%s failed", name, exc_info=True)
        finally:
            done.set_result(seconds)  # always: merges wait for it

    threading.Thread(target=run, name=name).start()
    return done


def _converted(p: ExportPlan, reader: tensorio.ShardReader, name: str) -> dict[str, torch.Tensor]:
    return {name: _finite(p, name, reader.read(name).to(p.dtype))}


def _kept(reader: tensorio.ShardReader, name: str) -> dict[str, torch.Tensor]:
    return {name: reader.read(name)}


_STREAMS = threading.local()


@contextlib.contextmanager
def _stream(device: str):
    """On CUDA, each worker thread's copies and kernels on a stream of its own: one tensor's transfers overlap
    another's merge, instead of queueing behind it on the default stream."""
    if torch.device(device).type != "cuda":
        yield
        return
    streams = _STREAMS.__dict__.setdefault("by_device", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    with torch.cuda.stream(streams[device]):
        yield


def _finite(p: ExportPlan, name: str, t: torch.Tensor) -> torch.Tensor:
    """`t`, or a RewindError naming it: a NaN/Inf written silently would only show up as a broken model."""
    if not tensorio.all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        dtype = str(t.dtype).removeprefix("torch.")
        fix = (
            "fp16 overflows past 65504: pass --dtype bf16 (same size, fp32's range) or --dtype fp32"
            if t.dtype == torch.float16
            else "the update overflows even there: check the adapter and --alpha"
        )
        raise RewindError(
            f"{name}: {bad} non-finite values (Inf/NaN) in {dtype} at {p.point.describe()}; nothing was written: {fix}"
        )
    return t


def _set_config_dtype(config: Path, dtype: torch.dtype) -> None:
    """config.json names the dtype the weights are in: `dtype` (transformers >= 4.56) and/or `torch_dtype`."""
    if not config.is_file():
        return
    data = adapters.load_json(config)
    keys = [k for k in ("dtype", "torch_dtype") if k in data] or ["torch_dtype"]
    data.update({k: str(dtype).removeprefix("torch.") for k in keys})
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_adapter(p: ExportPlan, tmp: Path, settings: pipeline.Settings, busy: tensorio.Busy) -> dict[str, str]:
    """The adapter itself with its trained parameters scaled by its kind, so peft's own loading gives W(alpha).
    A job per module (and per tensor stored whole), run by the pipeline's workers. Unbudgeted: what is in flight is
    at most the adapter's own size (the "+ adapter" of the memory bound); base tensors are read inside a job."""
    tensors = adapters.load_safetensors(p.adapter / adapters.ADAPTER_WEIGHTS)
    if p.dtype is not None:  # scaled in fp32, rounded once to --dtype below
        tensors = {key: t.float() if t.is_floating_point() else t for key, t in tensors.items()}
    whole, by_module, _ = adapters.split_keys(tensors, p.tensors.shapes, p.update.method)
    jobs = {key: pipeline.Job(partial(_lerped, p, tensors, key, name)) for key, name in whole.items()}
    for module, leaves in by_module.items():
        job = pipeline.Job(partial(_scaled, p, tensors, module, leaves))
        jobs.update(dict.fromkeys(leaves.values(), job))
    for key in tensors.keys() - jobs.keys():  # what the path does not move stays as stored
        jobs[key] = pipeline.Job(partial(_rounded, p, {key: tensors[key]}))
    out = {
        key: (p.dtype if p.dtype is not None and t.is_floating_point() else t.dtype, t.shape)
        for key, t in tensors.items()
    }
    header, names = tensorio.layout(out)
    lane = pipeline.Lane(tmp / adapters.ADAPTER_WEIGHTS, header, names)
    (digest,), _ = pipeline.run([lane], jobs, replace(settings, in_flight=None), busy=busy)
    checksums = {adapters.ADAPTER_WEIGHTS: digest}
    for extra in (adapters.ADAPTER_CONFIG, methods.SIDECAR):
        if (p.adapter / extra).is_file():
            shutil.copy2(p.adapter / extra, tmp / extra)
            checksums[extra] = adapters.sha256(tmp / extra)
    return checksums


def _lerped(p: ExportPlan, tensors: dict[str, torch.Tensor], key: str, name: str) -> dict[str, torch.Tensor]:
    """A tensor peft stores whole (modules_to_save): interpolated from the base's."""
    t = tensors[key]
    return _rounded(p, {key: torch.lerp(p.tensors(name).float(), t.float(), p.alphas[name]).to(t.dtype)})


def _scaled(p: ExportPlan, tensors, module: str, leaves: dict[str, str]) -> dict[str, torch.Tensor]:
    """One module's adapter tensors scaled by its kind (the leaves it does not scale stay as stored)."""
    weight = f"{module}.weight"
    parts = {leaf: tensors[key] for leaf, key in leaves.items()}
    scaled = p.update.method.kind.scale(
        parts,
        p.update.deltas[weight],
        p.alphas[weight],
        lambda: p.tensors(weight),
        cayley_scale=p.point.cayley_scale,
    )
    parts.update({leaf: t.to(parts[leaf].dtype) for leaf, t in scaled.items()})
    return _rounded(p, {leaves[leaf]: t for leaf, t in parts.items()})


def _rounded(p: ExportPlan, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """In --dtype (where given), checked finite."""
    rounded = {key: t.to(p.dtype) if p.dtype is not None and t.is_floating_point() else t for key, t in tensors.items()}
    return {key: _finite(p, key, t).contiguous() for key, t in rounded.items()}


def model_card(p: ExportPlan, checksums: dict[str, str]) -> str:
    layer_alphas = p.layer_alphas()
    kind = "a merged checkpoint" if p.fmt == MERGED else "a peft adapter"
    lines = [
        "---",
        f"base_model: {p.base}",
        f"library_name: {'transformers' if p.fmt == MERGED else 'peft'}",
        "tags: [rewind, merge]",
        "---",
        f"# {p.out.name}",
        "",
        f"{kind.capitalize()} written by rewind {__version__}: the point {p.point.describe()} on the path from the "
        f"base (alpha = 0) to the finetune (alpha = 1).",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| base | {p.base} |",
        f"| adapter | {p.adapter.resolve()} |",
        f"| adapter sha256 | {p.update.sha256} |",
        f"| method | {p.update.method.name} |",
        f"| path | {p.point.path} |",
        f"| alpha | {p.point.alpha:g} |",
    ]
    if p.point.path == "cayley":
        lines.append(f"| cayley scale | {p.point.cayley_scale} |")
    if p.point.schedule.kind != "uniform":
        lines.append(f"| layer schedule | {p.point.schedule.kind} |")
        lines.append(
            "| per-layer alpha | " + ", ".join(f"{i}: {a:.4g}" for i, a in sorted(layer_alphas.items())) + " |"
        )
    if p.verified is not None:
        lines.append(f"| verified | reloaded logits within {p.verified:.3g} (max abs) of the in-memory model |")
    written = datetime.datetime.now(datetime.timezone.utc)
    lines += [f"| rewind | {__version__} |", f"| written | {written:%Y-%m-%d %H:%M UTC} |", "", "## Files (sha256)", ""]
    lines += [f"- `{name}` {digest}" for name, digest in checksums.items()]
    return "\n".join(lines) + "\n"


def _default_permissions(tmp: Path) -> None:
    """mkdtemp and safetensors create owner-only files; an export should look like any saved model."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    for f in tmp.iterdir():
        f.chmod(0o666 & ~umask)
