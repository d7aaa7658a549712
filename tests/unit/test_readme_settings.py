"""The README's settings table names every setting, so an operator can find each one."""

from __future__ import annotations

from pathlib import Path

from kandinsky_batch.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def settings_table() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Settings")
    return text[start : text.index("\n## ", start + 1)]


def test_every_setting_is_in_the_readme_table() -> None:
    table = settings_table()
    missing = [name for name in Settings.model_fields if f"_{name.upper()}`" not in table]
    assert not missing, f"settings missing from the README's table: {missing}"
