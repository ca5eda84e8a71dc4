"""The shipped demo adapter: its files match SHA256SUMS, rewind reads it as the OFT adapter it is, and nothing in
it points at the machine that trained it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from rewind import adapters, methods

DEMO = Path(__file__).resolve().parents[1] / "rewind" / "demo" / "oft-math"


def test_the_files_match_their_sha256sums():
    sums = dict(reversed(line.split()) for line in (DEMO / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {p.name for p in DEMO.iterdir()} - {"SHA256SUMS", "README.md"}
    for name, digest in sums.items():
        assert hashlib.sha256((DEMO / name).read_bytes()).hexdigest() == digest, name


def test_it_is_the_studys_oft_recipe_on_the_embedded_base():
    config = adapters.load_json(DEMO / "adapter_config.json")
    sidecar = adapters.load_json(DEMO / methods.SIDECAR)
    assert methods.identify(config, sidecar).name == "oft"
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    recipe = yaml.safe_load((DEMO / "recipe.yaml").read_text())
    assert (recipe["method"], recipe["base"], recipe["trainer"]["max_steps"]) == ("oft", "smollm2", 500)
    assert sidecar["step"] == recipe["trainer"]["max_steps"]


def test_nothing_names_a_local_path():
    for path in DEMO.iterdir():
        if path.suffix in (".json", ".yaml", ".md"):
            assert "/root" not in path.read_text() and "/home" not in path.read_text(), path.name
    assert json.loads((DEMO / "rewind_adapter.json").read_text())["base"] == "smollm2"
