"""Find the offline deploy tools: kubectl, hadolint, docker compose (the dev extra installs the
first two) and Prometheus's prometheus and promtool (Debian's `prometheus` package).

A missing tool skips a test on a developer's machine but fails it in CI (CI=true), so a
broken install can never turn the deploy checks green by skipping them.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = bool(os.environ.get("CI"))


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


def find_tool(name: str) -> str | None:
    """The venv's own binary first (pip installs it beside the interpreter), then PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which(name)


def require_tool(name: str, package: str) -> str:
    path = find_tool(name)
    if path is None:
        _missing(f"{name} not found; install it with `pip install {package}` (in the dev extra)")
        raise AssertionError("unreachable")
    return path


def require_system_tool(name: str, install: str) -> str:
    """A tool from the system's packages (not the dev extra), e.g. Debian's prometheus."""
    path = find_tool(name)
    if path is None:
        _missing(f"{name} not found; install it with `{install}`")
        raise AssertionError("unreachable")
    return path


def require_module(name: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"python module {name} not found; `pip install {package}` (in the dev extra)")
        raise AssertionError("unreachable") from None


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
