"""Replay every input in fuzz/regressions/<target>/ through its fuzz target: each once crashed, hung, or blew up
memory, and must now succeed or raise the project's own error (anything else propagates and fails here).
Also checks that every fuzz target refuses the random bytes it should, within the harness's limits."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REGRESSIONS = ROOT / "fuzz" / "regressions"


def _harness():
    spec = importlib.util.spec_from_file_location("fuzz_harness", ROOT / "fuzz" / "harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_harness", module)
    spec.loader.exec_module(module)
    return module


HARNESS = _harness()
CASES = sorted((p.parent.name, p.name) for p in REGRESSIONS.glob("*/*") if p.is_file())


def test_every_target_has_a_folder() -> None:
    assert {p.name for p in REGRESSIONS.iterdir() if p.is_dir()} == set(HARNESS.TARGETS)


@pytest.mark.parametrize(("target", "name"), CASES)
def test_regression(target: str, name: str) -> None:
    HARNESS.TARGETS[target]((REGRESSIONS / target / name).read_bytes())


@pytest.mark.parametrize("target", ["parse", "binary", "draw"])
def test_targets_accept_garbage(target: str) -> None:
    for data in (b"", b"\x00", b"{" * 300, b'layer { name: "\\', bytes(range(256))):
        HARNESS.TARGETS[target](data)


def test_a_bug_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness catches only the project's errors: a bug in the code under test reaches the fuzzer."""
    import prototxt2py.reader as reader

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(reader, "read_net_text", broken)
    with pytest.raises(KeyError):
        HARNESS.target_parse(b'name: "x"')
