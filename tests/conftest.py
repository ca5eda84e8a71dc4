"""Shared test settings: offline always; one embedded-model cache for the whole session; kept artifacts."""

import os
import tempfile
from pathlib import Path

import pytest

# Set before transformers/huggingface_hub are imported by any test module: they read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Without a GPU, rewind's Triton kernels (rewind/paths/fused.py) are checked in Triton's CPU interpreter, which
# triton reads when the kernels are defined; the paths themselves only use the kernels on CUDA.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Files tests keep for people to look at (screenshots of the HTML report): listed at the end of the run.
ARTIFACTS = Path(os.environ.get("REWIND_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "rewind-test-artifacts")
_kept: list[Path] = []


@pytest.fixture
def keep_artifact():
    """keep_artifact(name, data) -> the path it wrote under ARTIFACTS (REWIND_TEST_ARTIFACTS overrides)."""

    def keep(name: str, data: bytes) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(data)
        _kept.append(path)
        return path

    return keep


def pytest_terminal_summary(terminalreporter):
    if _kept:
        terminalreporter.write_line(
            f"test artifacts ({len(_kept)}) in {ARTIFACTS}: " + ", ".join(p.name for p in _kept)
        )
