"""The package builds without a warning and carries its data files (the store's Lua scripts)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_builds_quietly_with_every_data_file(tmp_path: Path):
    source = tmp_path / "src"  # a copy: a build writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("kandinsky_batch", "producer", "worker"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "Warning" not in output and "would be ignored" not in output, output
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    patterns = (
        "kandinsky_batch/store/lua/*.lua",
        "producer/gallery/*.html",
        "producer/gallery/*.js",
        "producer/reproduce/*.txt",
    )
    data = [path.relative_to(ROOT).as_posix() for pattern in patterns for path in ROOT.glob(pattern)]
    assert len(data) > 3 and not set(data) - names, set(data) - names
    modules = [path.relative_to(ROOT).as_posix() for package in ("kandinsky_batch", "producer", "worker")
               for path in (ROOT / package).rglob("*.py")]  # fmt: skip
    assert len(modules) > 50 and not set(modules) - names, set(modules) - names
    typed = {"kandinsky_batch/py.typed", "producer/py.typed", "worker/py.typed"}
    assert typed <= names, typed - names  # type checkers read the packages' annotations
