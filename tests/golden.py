"""Helpers to run the shared golden cases (computed by real Caffe 1.0) against prototxt2py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
CORPUS = SHARED / "corpus"


def cases(suite: str) -> list[Path]:
    """Case folders of a golden suite (folders holding a case.json), sorted; [] if the suite is absent."""
    root = GOLDEN / suite
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob("*/case.json"))


def case_params(suite: str, slow: set[str] = frozenset()) -> list:
    """pytest params for a suite, with ids = case names and the ``slow`` mark on the named cases."""
    out = []
    for path in cases(suite):
        marks = [pytest.mark.slow] if path.name in slow else []
        out.append(pytest.param(path, id=path.name, marks=marks))
    return out


def meta(case: Path) -> dict:
    return json.loads((case / "case.json").read_text())


def npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, what: str) -> None:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, Caffe has {want.shape}"
    if not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        err = np.abs(got - want) - rtol * np.abs(want)
        i = np.unravel_index(np.argmax(err), err.shape) if err.ndim else ()
        raise AssertionError(
            f"{what}: max excess error {float(err.max()):.3g} at {i}: got {got[i]!r}, Caffe {want[i]!r} "
            f"(rtol {rtol}, atol {atol})"
        )
