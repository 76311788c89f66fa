"""Regenerate the README's layer table from the registry (``prototxt2py layers --markdown``).

Run: ``.venv/bin/python scripts/gen_readme_layers.py``; ``tests/test_readme.py`` fails when it is stale.
"""

from __future__ import annotations

from pathlib import Path

from prototxt2py.layer_table import layer_table

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- layer-table:begin -->", "<!-- layer-table:end -->"


def render(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{layer_table(markdown=True)}\n{END}{tail}"


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
