"""The README's layer table is the registry's (regenerate with scripts/gen_readme_layers.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_layer_table_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_readme_layers.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = (ROOT / "README.md").read_text()
    assert gen.BEGIN in text and gen.END in text
    assert gen.render(text) == text, "README layer table is stale: run scripts/gen_readme_layers.py"


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("## Command line")]
    assert "bash scripts/demo.sh" in head and "bash scripts/test.sh" in head
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
