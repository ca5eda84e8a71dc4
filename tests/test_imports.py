"""Import structure: every rewind module imports on its own, and no rewind module is part of an import cycle.

A cycle hidden behind a function-level import still breaks the module that is imported first in some order, so the
graph below counts every import statement, wherever it sits in the file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rewind

ROOT = Path(rewind.__file__).parent


def _module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _module_names()


def imports_of(module: str) -> set[str]:
    """The rewind modules `module` imports, at any depth of its code."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            anchor = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(p for p in (anchor, node.module) if p)
            # `from . import data` imports the submodule; the package itself is already imported (it is the parent)
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return out & MODULES.keys()


def cycles(modules: list[str]) -> list[list[str]]:
    """The import cycles among `modules` (Tarjan's strongly connected components of more than one module, or one
    that imports itself)."""
    graph = {m: sorted(imports_of(m) & set(modules)) for m in modules}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in graph[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while not component or component[-1] != m:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1 or m in graph[m]:
                found.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_the_graph_sees_function_level_imports():
    # The check must see what made the circle: recipe.py importing data/grpo/inits/sft inside a function.
    assert {"rewind.train.data", "rewind.train.grpo", "rewind.train.inits", "rewind.train.sft"} <= imports_of(
        "rewind.train.recipe"
    )
    assert imports_of("rewind.train.sft") == {"rewind.train.checkpoints"}  # `from . import checkpoints`


def test_cycles_finds_a_late_import_cycle(monkeypatch, tmp_path):
    files = {
        "fake_a": "def f():\n    from . import fake_b\n",
        "fake_b": "from .fake_a import f\n",
        "fake_c": "from . import fake_b\n",
    }
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(text)
        monkeypatch.setitem(MODULES, f"rewind.{name}", tmp_path / f"{name}.py")
    assert cycles([f"rewind.{name}" for name in files]) == [["rewind.fake_a", "rewind.fake_b"]]


def test_train_has_no_import_cycle():
    train = [m for m in MODULES if m == "rewind.train" or m.startswith("rewind.train.")]
    assert "rewind.train.schema" in train
    assert cycles(train) == []


def test_rewind_has_no_import_cycle():
    assert cycles(list(MODULES)) == []


def test_every_module_imports_on_its_own():
    # One fresh interpreter; before each module every rewind module is dropped from sys.modules, so each import
    # starts from nothing of rewind (third-party packages stay loaded: only rewind's own import order matters here).
    code = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'rewind' or m.startswith('rewind.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *MODULES], capture_output=True, text=True, cwd=ROOT.parent, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
