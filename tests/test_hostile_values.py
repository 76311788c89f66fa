"""Legal but awkward values in model and solver files: layer names torch's modules use themselves, learning
rates that overflow, net names that shadow modules. Each works as in Caffe (or names the file), never exit 3."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import prototxt2py
from prototxt2py.backends.codegen import file_stem, generate
from prototxt2py.cli import main
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.train.lr_policy import LrParams, learning_rate

TORCH_NAMES = """name: "names"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "forward" type: "ReLU" bottom: "x" top: "y" }
layer { name: "training" type: "Convolution" bottom: "y" top: "z" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "__init__" type: "Convolution" bottom: "z" top: "w" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "append" type: "ReLU" bottom: "w" top: "w" }
layer { name: "forward_" type: "Scale" bottom: "w" top: "s" scale_param { bias_term: true } }
"""


def test_layers_named_like_torch_module_attributes(tmp_path: Path) -> None:
    """``add_module`` refuses ``forward``, ``training``, ``__init__``, ``append`` (exit 3 once): their keys get a
    ``_`` (a real ``forward_`` then becomes ``forward__2``); Caffe names still find them."""
    path = tmp_path / "names.prototxt"
    path.write_text(TORCH_NAMES)
    graph = prototxt2py.graph(str(path))
    assert graph.layer_keys() == ["in", "forward_", "training_", "__init___", "append_", "forward__2"]
    net = prototxt2py.load(graph)
    assert isinstance(net.layer("training"), torch.nn.Module) and net.training is False
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        got = net(x=x)["s"]
        conv1, conv2, scale = net.layer("training"), net.layer("__init__"), net.layer("forward_")
        want = torch.relu(conv2(conv1(torch.relu(x))))
        want = want * scale.weight.view(1, -1, 1, 1) + scale.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(got, want)
    code = generate(graph)
    scope: dict = {}
    exec(compile(code.source, "<generated>", "exec"), scope)
    module = scope[code.class_name]()
    module.load_state_dict({code.keys[k]: v for k, v in net.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(module(x), got)
    r = CliRunner().invoke(main, ["convert", str(path), "--to", "python", "-o", str(tmp_path / "gen")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("policy", "gamma", "power", "it", "want"), [
    ("sigmoid", 1000.0, 0.0, 0, 0.0),  # exp(1000) overflows: Caffe's rate is base / inf = 0
    ("sigmoid", 1000.0, 0.0, 12, 0.1),
    ("step", 1e30, 0.0, 12, math.inf),  # gamma ** 12 beyond double: inf, not Python's OverflowError
    ("exp", 1e30, 0.0, 12, math.inf),
    ("inv", 1e30, -5.0, 12, math.inf),
    ("poly", 0.0, 0.5, 12, math.nan),  # past max_iter: a negative base to a fractional power is NaN in C
])
def test_learning_rates_overflow_as_in_caffe(policy: str, gamma: float, power: float, it: int, want: float) -> None:
    rate, _ = learning_rate(LrParams(policy, 0.1, gamma, power, 1, (), 5), it, 0)
    if math.isnan(want):
        assert math.isnan(rate)
    else:
        assert rate == pytest.approx(want)


def test_generated_file_names_never_shadow_what_they_import() -> None:
    assert [file_stem(n) for n in ("torch", "class", "math", "ResNet-50", "3d-net", "lenet")] == [
        "torch_net", "class_net", "math_net", "resnet_50", "net_3d_net", "lenet"]


def test_update_rule_errors_name_the_solver_file(tmp_path: Path) -> None:
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 dim: 3 } } }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
                   'num_output: 1 } }\nlayer { name: "l" type: "Reduction" bottom: "y" top: "l" loss_weight: 1 }\n')
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}" type: "RMSProp" momentum: 0.9 base_lr: 0.1 lr_policy: "fixed" max_iter: 1 '
                      'snapshot_prefix: "s"\n')
    r = CliRunner().invoke(main, ["train", str(solver), "--quiet"])
    assert (r.exit_code, r.stderr) == (1, f"error: {solver}: momentum cannot be used with RMSProp\n")
    solver.write_text(f'net: "{net}" base_lr: 0.1 lr_policy: "step" max_iter: 1\n')
    r = CliRunner().invoke(main, ["train", str(solver), "--quiet"])
    assert (r.exit_code, r.stderr) == (1, f"error: {solver}: lr_policy 'step' needs stepsize > 0\n")


def test_a_latin1_prototxt_is_text(tmp_path: Path) -> None:
    """Caffe's text parser takes any byte in a comment; a Latin-1 comment once made the file "binary"."""
    path = tmp_path / "latin.prototxt"
    path.write_bytes(b'name: "x"\n# r\xe9seau\nlayer { name: "data" type: "Input" top: "data" input_param { shape { '
                     b'dim: 1 dim: 2 } } }\nlayer { name: "r\xe9lu" type: "ReLU" bottom: "data" top: "out" }\n')
    graph = prototxt2py.graph(str(path))
    assert [n.name for n in graph.nodes] == ["data", "r\xe9lu"]
    r = CliRunner().invoke(main, ["summary", str(path)])
    assert r.exit_code == 0 and "r\xe9lu" in r.stdout


@pytest.mark.parametrize(("filler", "message"), [
    ('type: "gaussian" std: -1', "gaussian filler std must be above 0, got -1"),
    ('type: "gaussian" std: 0', "gaussian filler std must be above 0, got 0"),
    ('type: "uniform" min: 2 max: 1', "uniform filler min 2.0 is above max 1.0"),
])
def test_dummydata_fillers_caffe_refuses_are_one_error(tmp_path: Path, filler: str, message: str) -> None:
    """caffe_rng_gaussian/caffe_rng_uniform CHECK these at set-up; pycaffe's Net and the CLI name the layer
    (before: a bare torch RuntimeError from inside the first fill)."""
    from prototxt2py import caffe

    path = tmp_path / "n.prototxt"
    path.write_text('layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 2 dim: 3 } '
                    f"data_filler {{ {filler} }} }} }}\n")
    with pytest.raises(Prototxt2pyError, match=rf"n.prototxt:1:7: layer 'data': cannot build PyTorch module: "
                                               rf"{message}"):
        caffe.Net(str(path), caffe.TEST)
