"""rewind as a user installs it: a wheel built from this checkout, installed (not editable) into a fresh virtual
env, run from a directory outside the checkout. What an editable checkout finds by relative path (the recipes) has
to come from the package itself.

The build uses pip's build isolation, so it fetches the declared build backend (setuptools) from the package index:
this checks that pyproject.toml's build requirement builds its own metadata. The env sees the system site packages
for torch and the other dependencies; rewind itself comes from the wheel.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rewind.train import available

pytestmark = pytest.mark.install
CHECKOUT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "rewind"]


def _run(cmd: list, cwd: Path, env: dict) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the venv's bin dir, an empty working dir, the environment to run in)."""
    tmp = tmp_path_factory.mktemp("install")
    # A copy of what the wheel is built from: building in the checkout would leave build/ and *.egg-info there.
    for name in SOURCES:
        src, dst = CHECKOUT / name, tmp / "src" / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", tmp / "src"], tmp, env)
    wheel = next((tmp / "dist").glob("rewind-*.whl"))
    _run([sys.executable, "-m", "venv", "--system-site-packages", tmp / "venv"], tmp, env)
    bin_dir = tmp / "venv" / "bin"
    _run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", wheel], tmp, env)
    work = tmp / "elsewhere"
    work.mkdir()
    return bin_dir, work, env


def test_rewind_comes_from_the_wheel(installed):
    bin_dir, work, env = installed
    where = _run([bin_dir / "python", "-c", "import rewind; print(rewind.__file__)"], work, env).strip()
    assert Path(where).is_relative_to(bin_dir.parent), where
    assert not Path(where).is_relative_to(CHECKOUT)


def test_recipes_lists_every_recipe(installed):
    bin_dir, work, env = installed
    out = _run([bin_dir / "rewind", "recipes"], work, env)
    listed = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    assert listed == available() and len(listed) >= 22


def test_print_recipe_from_the_package(installed):
    bin_dir, work, env = installed
    out = _run([bin_dir / "rewind", "train", "sft/lora", "peft.r=4", "--print-recipe"], work, env)
    assert "kind: sft" in out and "method: lora" in out and "preset: smollm2" in out and "r: 4" in out
    assert list(work.iterdir()) == []  # printing writes nothing


def test_the_demo_adapter_comes_with_the_package(installed):
    bin_dir, work, env = installed
    code = (
        "import hashlib, pathlib, rewind; d = pathlib.Path(rewind.__file__).parent / 'demo' / 'oft-math'; "
        "print(hashlib.sha256((d / 'adapter_model.safetensors').read_bytes()).hexdigest()); "
        "print(sorted(p.name for p in d.iterdir()))"
    )
    digest, names = _run([bin_dir / "python", "-c", code], work, env).splitlines()
    shipped = CHECKOUT / "rewind" / "demo" / "oft-math"
    assert digest == hashlib.sha256((shipped / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert names == str(sorted(p.name for p in shipped.iterdir()))
