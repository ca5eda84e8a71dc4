"""Shared test settings: offline always; one embedded-model cache for the whole session."""

import os

# Set before transformers/huggingface_hub are imported by any test module: they read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
