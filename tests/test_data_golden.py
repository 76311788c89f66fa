"""Data layer readers against Caffe 1.0's own outputs (``../shared/golden/data``): exact in TEST phase; TRAIN
phase random crops/mirrors have Caffe's shapes, labels and value bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from golden import case_params, meta, npz

from prototxt2py.data import open_source
from prototxt2py.data.layers import data_layers
from prototxt2py.reader import read_net_text

pytest.importorskip("lmdb")
pytest.importorskip("cv2")

def _open(case: Path, monkeypatch: pytest.MonkeyPatch):
    """The case's data layers opened with the case folder as working directory (its paths are relative)."""
    m = meta(case)
    monkeypatch.chdir(case)
    net = read_net_text((case / "net.prototxt").read_text(), str(case / "net.prototxt")).net
    layers = data_layers(net, m["phase"])
    return m, [(layer, open_source(layer)) for layer in layers]


def _feed(case: Path, sources) -> None:
    z = npz(case / "inputs.npz")
    for _, source in sources:
        if hasattr(source, "reset"):
            source.reset(z["data"], z["label"])


@pytest.mark.parametrize("case", case_params("data"))
def test_golden_data(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import prototxt2py.data._readers  # noqa: F401  (registers the readers present in this checkout)
    from prototxt2py.data import READERS

    net = read_net_text((case / "net.prototxt").read_text()).net
    missing = {layer.type for layer in net.layer} - set(READERS)
    if missing:
        pytest.skip(f"no reader for {', '.join(sorted(missing))} in this checkout")
    m, sources = _open(case, monkeypatch)
    _feed(case, sources)
    for k in range(m["forward_passes"]):
        got = {}
        for layer, source in sources:
            got.update(zip(layer.tops, source.next_batch(), strict=True))
        if m.get("random"):
            rec = m["recorded"][k]
            for blob, want in rec.items():
                assert list(got[blob].shape) == want["shape"], f"pass {k} {blob}"
                if "values" in want:
                    np.testing.assert_array_equal(got[blob], want["values"], err_msg=f"pass {k} {blob}")
                if "value_bounds" in want:
                    lo, hi = want["value_bounds"]
                    assert lo <= got[blob].min() and got[blob].max() <= hi, f"pass {k} {blob}"
            continue
        want = npz(case / m["outputs"][k])
        assert set(got) == set(want)
        for blob, value in got.items():
            w = want[blob]
            if w.shape != value.shape:  # MemoryData: Caffe's forward reshapes the label to (N, 1, 1, 1)
                assert m["outputs_content"][blob] == list(w.shape) and value.size == w.size, blob
                w = w.reshape(value.shape)
            assert value.dtype == np.float32
            np.testing.assert_array_equal(value, w, err_msg=f"{case.name} pass {k} blob {blob}")
