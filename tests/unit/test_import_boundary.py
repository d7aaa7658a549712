"""The import rules (docs/architecture.md): the core imports neither side and no torch, the producer
never imports torch, the worker never imports the producer.

Checked twice: statically, over every `import` in the source (so a lazy import cannot hide), and
by importing every module in a fresh interpreter (so a dependency's import cannot hide either).
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_LIBRARIES = {"torch", "diffusers", "transformers", "accelerate"}
# The one documented exception: the CLI's `worker`, `worker check`, `models make-tiny` and `demo`
# commands load the worker lazily, inside the command's function.
LAZY_WORKER_IMPORTS = {("producer/cli/local.py", "worker"), ("producer/demo.py", "worker")}


def imports(package: str) -> list[tuple[str, str, bool]]:
    """(file, top-level module imported, at module level?) for every import in a package."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                found.append((path.relative_to(ROOT).as_posix(), name.split(".")[0], id(node) in top_level))
    return found


def test_the_core_imports_neither_side_nor_any_gpu_library():
    bad = [(f, m) for f, m, _ in imports("kandinsky_batch") if m in {"producer", "worker"} | GPU_LIBRARIES]
    assert bad == []


def test_the_producer_imports_no_gpu_library_and_the_worker_only_lazily_in_the_cli():
    found = imports("producer")
    assert [(f, m) for f, m, _ in found if m in GPU_LIBRARIES] == []
    worker = [(f, m, top) for f, m, top in found if m == "worker"]
    assert worker, "the CLI's worker and demo commands load the worker"
    assert all((f, m) in LAZY_WORKER_IMPORTS and not top for f, m, top in worker), worker


def test_the_worker_never_imports_the_producer():
    assert [(f, m) for f, m, _ in imports("worker") if m == "producer"] == []


def all_modules(package: str) -> list[str]:
    path = ROOT / package
    return [package] + [m.name for m in pkgutil.walk_packages([str(path)], prefix=f"{package}.")]


@pytest.mark.parametrize("package", ["kandinsky_batch", "producer"])
def test_importing_every_module_of_a_torch_free_package_leaves_torch_unimported(package: str):
    modules = all_modules(package)
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(n for n in {'torch', 'diffusers', 'transformers', 'worker'} if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    assert len(modules) > 5


def test_worker_check_probe_does_not_load_torch():
    code = "import sys, worker.check\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
