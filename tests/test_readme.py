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


def test_readme_shows_the_generated_alexnet() -> None:
    """The README's excerpt of the generated AlexNet is what `convert --to python` writes today: its header is
    the file's beginning and its class the file's end (only the helper classes in between are elided)."""
    import prototxt2py

    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- alexnet-excerpt -->\n```python\n", 1)[1].split("```\n<!-- /alexnet-excerpt -->")[0]
    head, _, cls = block.partition("# ... the Caffe-exact helper classes AlexNet needs (InnerProduct, LRN) ...")
    source = prototxt2py.python_source(ROOT / "fixtures" / "alexnet" / "deploy.prototxt")
    assert source.startswith(head.rstrip() + "\n\n\n") and source.endswith(cls.lstrip())
    assert "class InnerProduct(nn.Module):" in source and "class LRN(nn.Module):" in source


def test_readme_lists_every_limit_with_its_default() -> None:
    """The README's limits table names every PROTOTXT2PY_MAX_* variable of prototxt2py/limits.py with its
    default, and links the error catalog."""
    from prototxt2py import limits

    text = (ROOT / "README.md").read_text()
    assert "(docs/errors.md)" in text
    shown = {"max_blob_elements": "2147483647", "max_param_bytes": "16 GiB", "max_temp_bytes": "8 GiB",
             "max_text_bytes": "16 MiB", "max_binary_bytes": "2 GiB - 1"}
    sizes = {"2147483647": 2**31 - 1, "16 GiB": 16 << 30, "8 GiB": 8 << 30, "16 MiB": 16 << 20,
             "2 GiB - 1": (2 << 30) - 1}
    assert set(shown) == set(limits._SPEC)
    for field, (variable, default) in limits._SPEC.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{variable}` |")), None)
        assert row is not None, f"{variable} missing from the README"
        assert row.split("|")[2].strip().startswith(shown[field]) and sizes[shown[field]] == default, row
