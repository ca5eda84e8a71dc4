"""Write a point of a path to disk: a merged HF checkpoint (default) or, where that is exact, a peft adapter.

Planning (which files, which tensors change, with what alpha) is separate from writing, so `--dry-run` shows the
plan. Writing streams tensor by tensor, shard by shard (peak memory: one shard plus the adapter), into a temporary
dir next to `out` that is renamed into place only when complete: no half checkpoint is ever visible at `out`.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import __version__, adapters, models, paths
from .engine import Point, layer_strengths, tensor_alphas
from .errors import RewindError
from .paths import Bound

MERGED, ADAPTER = "merged", "adapter"
_NOT_COPIED = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".gguf")
# Adapter tensors whose scaling moves the adapter along its natural path, exactly (how, per leaf name).
_SCALED_LEAVES = {"lora_B.weight": "scale", "lora_B": "scale", "vera_lambda_b": "scale", "miss_block": "scale",
                  "ia3_l": "ia3", "oft_R.weight": "generator"}
_NO_ADAPTER_FORMAT = {"dora": "DoRA's magnitude normalisation is not linear in B",
                      "full": "a full finetune has no adapter"}


@dataclass
class ExportPlan:
    base: str
    base_dir: Path
    adapter: Path
    update: adapters.Update
    point: Point
    fmt: str
    out: Path
    alphas: dict[str, float]  # updated tensor -> its alpha
    shards: list[Path] = field(default_factory=list)
    num_layers: int = 0

    def summary(self) -> str:
        lines = [f"export {self.fmt} {self.point.describe()} -> {self.out}",
                 f"  base     {self.base} ({self.base_dir})",
                 f"  adapter  {self.adapter} [{self.update.method.name}, sha256 {self.update.sha256[:12]}]",
                 f"  tensors  {len(self.alphas)} updated"]
        if self.fmt == MERGED:
            lines.append(f"  shards   {len(self.shards)}: " + ", ".join(s.name for s in self.shards))
        layer_alphas = self.layer_alphas()
        if len(set(layer_alphas.values())) > 1:
            lines.append("  layers   " + " ".join(f"{a:.3g}" for a in layer_alphas.values()))
        return "\n".join(lines)

    def layer_alphas(self) -> dict[int, float]:
        return {layer: alpha for name, alpha in self.alphas.items()
                if (layer := adapters.layer_of(name)) is not None}


def base_shards(base_dir: Path) -> list[Path]:
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [base_dir / f for f in dict.fromkeys(weight_map.values())]
    single = base_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise RewindError(f"{base_dir}: no safetensors weights (rewind reads no pickle checkpoints)")


class BaseTensors:
    """Lazy access to the base checkpoint's tensors by name, without loading whole shards."""

    def __init__(self, shards: list[Path]):
        from safetensors import safe_open

        self._where: dict[str, Path] = {}
        self.shapes: dict[str, torch.Size] = {}
        for shard in shards:
            with safe_open(shard, "pt") as f:
                for name in f.keys():
                    self._where[name] = shard
                    self.shapes[name] = torch.Size(f.get_slice(name).get_shape())

    def __call__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self._where[name], "pt") as f:
            return f.get_tensor(name)


def check_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RewindError(f"--out {out} exists and is not empty: pass --force to replace it")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise RewindError(f"--out {out}: cannot write in {parent} ({exc.strerror})") from exc


def plan(base, adapter, out, alpha: float = 1.0, path: str = "auto", schedule: paths.Schedule | None = None,
         fmt: str = MERGED, force: bool = False, init_adapter=None, cayley_scale: str = "linear",
         allow_extrapolation: bool = False) -> ExportPlan:
    """Check every input and decide every tensor's alpha; touches nothing on disk."""
    if fmt not in (MERGED, ADAPTER):
        raise RewindError(f"--format {fmt}: choose {MERGED} or {ADAPTER}")
    out = Path(out)
    check_out(out, force)
    base_dir = models.local_dir(base)
    shards = base_shards(base_dir)
    tensors = BaseTensors(shards)
    update = adapters.read(adapter, tensors.shapes, init_adapter, base_tensor=tensors)
    path_cls = paths.resolve(path, update.natural_path)
    for name, delta in update.deltas.items():
        if not path_cls.accepts(delta):
            raise RewindError(f"path {path_cls.name!r} does not apply to {update.method.name} ({name}); "
                              f"try --path auto")
    point = Point(path_cls.name, float(alpha), schedule or paths.Schedule(), cayley_scale)
    num_layers = int(json.loads((base_dir / "config.json").read_text()).get("num_hidden_layers", 0))
    strengths = layer_strengths(update, tensors) if point.schedule.kind == "balanced" else None
    names = list(update.deltas)
    alphas = dict(zip(names, tensor_alphas(names, point, num_layers, strengths, allow_extrapolation)))
    result = ExportPlan(models.hub_id(base), base_dir, Path(adapter), update, point, fmt, out, alphas,
                        shards, num_layers)
    if fmt == ADAPTER:
        _check_adapter_format(result)
    return result


def _check_adapter_format(p: ExportPlan) -> None:
    method = p.update.method
    if method.name in _NO_ADAPTER_FORMAT:
        raise RewindError(f"--format adapter is not exact for {method.name} ({_NO_ADAPTER_FORMAT[method.name]}): "
                          f"use --format merged")
    if p.point.path != method.natural_path:
        raise RewindError(f"--format adapter writes {method.name}'s own path ({method.natural_path}), not "
                          f"{p.point.path}: use --format merged")
    if isinstance(p.update.config.get("init_lora_weights"), str):
        raise RewindError("--format adapter: this adapter needs a residual base; convert it first (peft's "
                          "path_initial_model_for_weight_conversion) or use --format merged")


def write(p: ExportPlan, device: str = "cpu") -> Path:
    """Carry out a plan. Returns the output dir."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.out.name}.tmp-", dir=p.out.resolve().parent))
    try:
        files = _write_merged(p, tmp, device) if p.fmt == MERGED else _write_adapter(p, tmp)
        (tmp / "README.md").write_text(model_card(p, files))
        _default_permissions(tmp)
        _replace(tmp, p.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return p.out


def export(base, adapter, out, alpha: float = 1.0, path: str = "auto", schedule=None, fmt: str = MERGED,
           force: bool = False, init_adapter=None, cayley_scale: str = "linear", allow_extrapolation: bool = False,
           device: str = "cpu") -> Path:
    """Plan and write in one call (the notebook form of `rewind export`)."""
    return write(plan(base, adapter, out, alpha, path, schedule, fmt, force, init_adapter, cayley_scale,
                      allow_extrapolation), device)


def _write_merged(p: ExportPlan, tmp: Path, device: str) -> dict[str, str]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path_cls = paths.resolve(p.point.path, p.update.natural_path)
    checksums = {}
    bar = tqdm(total=sum(len(_keys(s)) for s in p.shards), desc="export", unit="tensor", leave=False)
    for shard in p.shards:
        tensors = {}
        with safe_open(shard, "pt") as f:
            for name in f.keys():
                w0 = f.get_tensor(name)
                if name in p.alphas:
                    w0 = w0.to(device)
                    out = torch.empty_like(w0)
                    path_cls([Bound(name, p.update.deltas[name], w0, out)],
                             cayley_scale=p.point.cayley_scale).write([p.alphas[name]])
                    w0 = out.cpu()
                tensors[name] = w0.contiguous()
                bar.update()
        save_file(tensors, tmp / shard.name, metadata={"format": "pt"})
        checksums[shard.name] = adapters.sha256(tmp / shard.name)
        del tensors
    bar.close()
    for extra in p.base_dir.iterdir():
        if extra.is_file() and not extra.name.endswith(_NOT_COPIED) and extra.name != "README.md":
            shutil.copy2(extra, tmp / extra.name)
    return checksums


def _keys(shard: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(shard, "pt") as f:
        return list(f.keys())


def _write_adapter(p: ExportPlan, tmp: Path) -> dict[str, str]:
    """The adapter itself with its trained parameter scaled, so peft's own loading gives W(alpha)."""
    from safetensors.torch import save_file

    from .paths.cayley import SCALES
    from .updates import Replace, Rotation

    prefix = "base_model.model."
    tensors = adapters.load_safetensors(p.adapter / adapters.ADAPTER_WEIGHTS)
    tensors_out = {}
    base = BaseTensors(p.shards)
    for key, t in tensors.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if name in p.alphas and isinstance(p.update.deltas[name], Replace):  # modules_to_save: interpolate
            tensors_out[key] = torch.lerp(base(name).float(), t.float(), p.alphas[name]).to(t.dtype)
            continue
        leaf = next((leaf for leaf in _SCALED_LEAVES if name.endswith("." + leaf)), None)
        if leaf is None:
            tensors_out[key] = t
            continue
        alpha = p.alphas[name[: -len(leaf)] + "weight"]
        rule = _SCALED_LEAVES[leaf]
        if rule == "scale":
            t = t * alpha
        elif rule == "ia3":
            t = 1 + alpha * (t - 1)
        else:  # OFT: scale the generator peft will use (already projected when coft is on)
            rotation: Rotation = p.update.deltas[name[: -len(leaf)] + "weight"]
            rows, cols = torch.triu_indices(rotation.block_size, rotation.block_size, 1)
            t = (rotation.Q[:, rows, cols] * SCALES[p.point.cayley_scale](alpha)).to(t.dtype)
        tensors_out[key] = t.contiguous()
    save_file(tensors_out, tmp / adapters.ADAPTER_WEIGHTS, metadata={"format": "pt"})
    for extra in (adapters.ADAPTER_CONFIG, "rewind_adapter.json"):
        if (p.adapter / extra).is_file():
            shutil.copy2(p.adapter / extra, tmp / extra)
    return {adapters.ADAPTER_WEIGHTS: adapters.sha256(tmp / adapters.ADAPTER_WEIGHTS)}


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
        lines.append("| per-layer alpha | " + ", ".join(f"{i}: {a:.4g}" for i, a in sorted(layer_alphas.items()))
                     + " |")
    lines += [f"| rewind | {__version__} |", f"| written | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} |",
              "", "## Files (sha256)", ""]
    lines += [f"- `{name}` {digest}" for name, digest in checksums.items()]
    return "\n".join(lines) + "\n"


def _default_permissions(tmp: Path) -> None:
    """mkdtemp and safetensors create owner-only files; an export should look like any saved model."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    for f in tmp.iterdir():
        f.chmod(0o666 & ~umask)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished dir into place; an old `out` (only with --force) is removed after the swap."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
