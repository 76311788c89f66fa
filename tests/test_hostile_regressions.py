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


def test_atheris_alarm_timeout_is_pushed_out_of_reach() -> None:
    """atheris reads ``-timeout=0`` as "0 seconds" and kills any input running past a 1 s SIGALRM tick (the
    fuzz runs of the slow targets died of it): whatever timeout is given, the harness passes a huge one."""
    argv = ["harness.py", "-timeout=0", "-max_total_time=300", "corpus", "-timeout=25"]
    out = HARNESS._without_alarm_timeout(argv)
    assert out[:3] == ["harness.py", "-max_total_time=300", "corpus"]
    assert [a for a in out if a.startswith("-timeout=")] == [f"-timeout={HARNESS.ALARM_TIMEOUT_SECONDS}"]
    assert HARNESS.ALARM_TIMEOUT_SECONDS > 24 * 3600 > 10 * HARNESS.HANG_SECONDS


@pytest.mark.parametrize("target, name, message", [
    ("run", "dropout-ratio-over-one.prototxt",
     r":3:7: layer 'encdrop3': .*dropout_ratio must be in \[0, 1\), got 1\.5"),
    ("onnx", "roi-pooling-3-axis-features.prototxt", r":4:7: layer 'roi_pool': ROIPooling needs a 4-axis"),
    ("onnx", "input-zero-dim-reshape.prototxt", r":2:7: layer 'in0': top '318' would be empty"),
    ("run", "detection-output-loc-values-per-image.prototxt",
     r":5:7: layer 'detection_out': loc \(1, 8, 8\) has 64 values per image, need 2 priors x 1 x 4"),
    ("run", "deconvolution-stride-zero.prototxt", r":3:7: layer 'deconv2': stride and dilation must be positive"),
    ("run", "input-zero-dim-reduction.prototxt", r":2:7: layer 'in0': top 'view_blob35' would be empty: shape \(0, 4"),
])
def test_fuzz_findings_are_located_errors(target: str, name: str, message: str) -> None:
    """The findings of this stop's onnx/run fuzz runs: each is one located error, not a torch/onnx one."""
    import prototxt2py
    from prototxt2py.errors import Prototxt2pyError

    with pytest.raises(Prototxt2pyError, match=message):
        prototxt2py.graph(REGRESSIONS / target / name)
