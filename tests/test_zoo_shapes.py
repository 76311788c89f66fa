"""Shape truth of big public nets: blob shapes, parameter shapes and parameter totals equal Caffe's."""

from __future__ import annotations

from pathlib import Path

import pytest
from golden import SHARED, case_params, meta

import prototxt2py
from prototxt2py.summary import summary_json


@pytest.mark.parametrize("case", case_params("zoo"))
def test_zoo_shapes(case: Path) -> None:
    m = meta(case)
    js = summary_json(prototxt2py.graph(SHARED / m["prototxt"], phase=m.get("phase", "TEST")))
    for blob, shape in m["blob_shapes"].items():
        assert js["blob_shapes"].get(blob) == shape, f"blob {blob}: {js['blob_shapes'].get(blob)} != Caffe {shape}"
    assert js["param_shapes"] == m["param_shapes"]
    assert js["total_params"] == m["total_params"]
