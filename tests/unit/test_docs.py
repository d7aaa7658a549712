"""The docs are held to the code: every setting, module, link and named test they mention exists.

An outside reader relies on these pages; a rename in the code must not leave them pointing at
nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kandinsky_batch.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_setting_is_in_the_settings_page() -> None:
    table = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if f"_{name.upper()}`" not in table]
    assert not missing, f"settings missing from docs/settings.md: {missing}"


def modules() -> list[str]:
    """Every module of the three packages, as a path from the repository root."""
    found = []
    for package in ("kandinsky_batch", "producer", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name != "__init__.py" or path.parent.name != package:
                found.append(path.relative_to(ROOT).as_posix())
    return found


def test_the_architecture_page_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    folders = text[text.index("## Folders") : text.index("\n## ", text.index("## Folders") + 1)]

    def named(module: str) -> bool:
        path = Path(module)
        if path.name == "__init__.py":  # a subpackage: its folder, or its __init__.py
            return f"{path.parent.name}/" in folders
        return path.name in folders

    missing = [m for m in modules() if not named(m)]
    assert not missing, f"modules docs/architecture.md's folder map does not name: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_of_a_page_resolves(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = [
        target for target in LINK.findall(text) if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, f"{page.name} links to missing files: {broken}"


def test_every_test_the_guarantees_name_exists() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    missing = []
    for row in (line for line in text.splitlines() if line.startswith("| ") and "`" in line):
        cell = row.rstrip(" |").rsplit(" | ", 1)[-1]
        current: Path | None = ROOT / "tests" / "integration" / "test_faults.py"  # the table's default
        for name in re.findall(r"`([^`]+)`", cell):
            path, _, func = name.partition("::")
            if path.endswith(".py"):
                current = ROOT / path
                if not current.exists():
                    missing.append(path)
                    continue
            else:
                func = name
            func = func.lstrip(":")
            defined = current is not None and f"def {func}(" in current.read_text(encoding="utf-8")
            if func.startswith("test_") and not defined:
                missing.append(f"{current.relative_to(ROOT) if current else '?'}::{func}")
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"


def test_the_readme_is_a_map_of_at_most_200_lines() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_curl_that_sends_json_says_so(page: Path) -> None:
    # curl -d sends form encoding unless told otherwise; the API then sees no JSON object.
    text = page.read_text(encoding="utf-8").replace("\\\n", " ")
    bare = [
        line.strip()[:80]
        for line in text.splitlines()
        if line.lstrip().startswith("curl") and " -d '{" in line and "application/json" not in line
    ]
    assert not bare, f"{page.name}: curl sending JSON without a Content-Type: {bare}"
