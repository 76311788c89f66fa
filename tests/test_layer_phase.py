"""A layer's own ``phase`` field wins over the net's, as ``Net::Init`` gives the net's phase only to layers that
set none (``if (!param.layer(i).has_phase()) set_phase(phase_)``): BatchNorm's default ``use_global_stats``,
Dropout's masks and the data transformer's crops follow the layer's phase. The runtime module, the generated
module and the ONNX export keep it whatever mode the net is put in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_codegen import exec_source

import prototxt2py
from prototxt2py.backends.codegen import generate
from prototxt2py.backends.onnx_export import to_onnx_model
from prototxt2py.data.layers import data_layer
from prototxt2py.errors import UnsupportedLayerError
from prototxt2py.proto import caffe_pb2
from prototxt2py.reader import read_net_text
from prototxt2py.train.feeding import data_layer_for

HEAD = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } } }\n'
BN = 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "z" phase: TRAIN }\n'
DROP = 'layer { name: "drop" type: "Dropout" bottom: "x" top: "y" phase: {phase} }\n'
X = torch.arange(48, dtype=torch.float32).reshape(4, 3, 2, 2) % 5 + 1


def batch_standardised(x: torch.Tensor) -> torch.Tensor:
    """Caffe's BatchNorm with batch statistics (biased variance, eps 1e-5) per channel."""
    mean = x.mean((0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def test_a_train_phase_batchnorm_uses_batch_statistics_in_a_test_net() -> None:
    net = prototxt2py.load(read_net_text(HEAD + BN), phase="TEST")
    assert not net.training and net.layer("bn").training
    net.eval()  # eval() does not move it either
    with torch.no_grad():
        torch.testing.assert_close(net(X)["z"], batch_standardised(X), rtol=1e-5, atol=1e-5)
    plain = prototxt2py.load(read_net_text(HEAD + BN.replace(" phase: TRAIN", "")), phase="TEST")
    with torch.no_grad():  # without the field: stored statistics, all zero here, so the input itself
        torch.testing.assert_close(plain(X)["z"], X / np.sqrt(np.float32(1e-5)), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(("net_phase", "layer_phase", "masks"), [("TEST", "TRAIN", True), ("TRAIN", "TEST", False)])
def test_dropout_keeps_its_own_phase(net_phase: str, layer_phase: str, masks: bool) -> None:
    net = prototxt2py.load(read_net_text(HEAD + DROP.replace("{phase}", layer_phase)), phase=net_phase)
    for mode in (True, False):
        net.train(mode)
        y = net(torch.ones(4, 3, 2, 2))["y"]
        assert bool((y == 0).any()) == masks, (mode, y)


def test_the_generated_module_pins_the_phase_as_the_runtime() -> None:
    net = prototxt2py.load(read_net_text(HEAD + BN + DROP.replace("{phase}", "TEST")), phase="TRAIN")
    code = generate(net.graph)
    assert "self.bn.train(True)" in code.source and "self.drop.train(False)" in code.source
    module = exec_source(code.source)[code.class_name]()
    module.load_state_dict({new: net.state_dict()[old] for old, new in code.keys.items()})
    for mode in (True, False):
        module.train(mode)
        assert module.bn.training and not module.drop.training
        with torch.no_grad():
            got = module(X)
        torch.testing.assert_close(got["z"], batch_standardised(X), rtol=1e-5, atol=1e-5)
        assert torch.equal(got["y"], X)


def test_onnx_follows_the_layers_own_phase() -> None:
    """A TEST net's ``phase: TRAIN`` Dropout samples: refused, as a TRAIN net's Dropout is; ``phase: TEST`` in a
    TRAIN net exports as the identity it is."""
    with pytest.raises(UnsupportedLayerError, match="layer 'drop'"):
        to_onnx_model(prototxt2py.graph(read_net_text(HEAD + DROP.replace("{phase}", "TRAIN")), phase="TEST"))
    model = to_onnx_model(prototxt2py.graph(read_net_text(HEAD + DROP.replace("{phase}", "TEST")), phase="TRAIN"))
    assert [n.op_type for n in model.graph.node] in ([], ["Identity"])


def test_a_data_layers_transformer_takes_the_layers_phase() -> None:
    """Both readers' descriptions: from the message (``data_layers``) and from the node (the training feeder)."""
    layer = caffe_pb2.LayerParameter(name="d", type="Data", phase=caffe_pb2.TEST)
    assert data_layer(layer, "TRAIN").phase == "TEST"
    assert data_layer(caffe_pb2.LayerParameter(name="d", type="Data"), "TRAIN").phase == "TRAIN"
    text = ('layer { name: "d" type: "Data" top: "x" phase: TRAIN data_param { source: "db" batch_size: 2 } }\n'
            'layer { name: "e" type: "Data" top: "y" data_param { source: "db" batch_size: 2 } }\n')
    g = prototxt2py.graph(read_net_text(text), phase="TEST", infer=False)
    assert [data_layer_for(n, "TEST").phase for n in g.nodes] == ["TRAIN", "TEST"]
