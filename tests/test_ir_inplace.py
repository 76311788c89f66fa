"""Caffe's in-place rule as ``InsertSplits`` + ``Net::Init`` apply it.

A layer may write its top i over its bottom i. But where that bottom's value has another reader (an earlier
layer, a second bottom of the same layer, or a written ``loss_weight``), ``InsertSplits`` gives it a Split and
renames the bottom, so the top keeps a name that is already taken and ``AppendTop`` aborts ("Top blob 'x'
produced by multiple sources"). Readers after the rewrite read the new value and are no second reader.
"""

from __future__ import annotations

import pytest

import prototxt2py
from prototxt2py.errors import GraphError
from prototxt2py.reader import read_net_text

HEAD = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'


def build(body: str) -> prototxt2py.ir.graph.Graph:
    return prototxt2py.graph(read_net_text(HEAD + body))


@pytest.mark.parametrize(
    ("body", "readers"),
    [
        (  # an earlier reader
            'layer { name: "a" type: "AbsVal" bottom: "x" top: "y" }\n'
            'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n',
            "2 readers ('a', 'r')",
        ),
        (  # the same layer reads the value twice
            'layer { name: "r" type: "Eltwise" bottom: "x" bottom: "x" top: "x" }\n',
            "2 readers ('r', 'r')",
        ),
        (  # a written loss weight on the producer counts as a reader
            'layer { name: "a" type: "AbsVal" bottom: "x" top: "y" loss_weight: 0.5 }\n'
            'layer { name: "r" type: "ReLU" bottom: "y" top: "y" }\n',
            "2 readers ('r', a loss_weight)",
        ),
        (  # the second version of an in-place chain is split as well
            'layer { name: "r1" type: "ReLU" bottom: "x" top: "x" }\n'
            'layer { name: "a" type: "AbsVal" bottom: "x" top: "y" }\n'
            'layer { name: "r2" type: "TanH" bottom: "x" top: "x" }\n',
            "2 readers ('a', 'r2')",
        ),
    ],
)
def test_an_in_place_rewrite_of_a_value_with_another_reader_is_refused(body: str, readers: str) -> None:
    with pytest.raises(GraphError) as e:
        build(body)
    msg = str(e.value)
    assert f"top '{'y' if 'loss_weight' in readers else 'x'}' is rewritten in place but has {readers}" in msg
    assert "produced by multiple sources" in msg


@pytest.mark.parametrize(
    "body",
    [
        # readers after the rewrite read the new value
        'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n'
        'layer { name: "a" type: "AbsVal" bottom: "x" top: "y" }\n'
        'layer { name: "b" type: "TanH" bottom: "x" top: "z" }\n',
        # a chain of in-place layers
        'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n'
        'layer { name: "d" type: "Dropout" bottom: "x" top: "x" }\n',
        # a zero loss weight is no reader (InsertSplits counts only nonzero written weights)
        'layer { name: "a" type: "AbsVal" bottom: "x" top: "y" loss_weight: 0 }\n'
        'layer { name: "r" type: "ReLU" bottom: "y" top: "y" }\n',
        # a loss weight on the in-place layer's own top is a reader of the new value
        'layer { name: "r" type: "ReLU" bottom: "x" top: "x" loss_weight: 1 }\n',
    ],
)
def test_in_place_rewrites_caffe_accepts_build(body: str) -> None:
    assert build(body).nodes[-1].type in ("ReLU", "TanH", "Dropout")
