"""Shared test settings: offline always; one embedded-model cache for the whole session."""

import os

# Set before transformers/huggingface_hub are imported by any test module: they read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Without a GPU, rewind's Triton kernels (rewind/paths/fused.py) are checked in Triton's CPU interpreter, which
# triton reads when the kernels are defined; the paths themselves only use the kernels on CUDA.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
