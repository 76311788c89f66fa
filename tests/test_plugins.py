"""The plugin API (issue 19): registration rules, entry points, raw text of fields our schema lacks, plugin
helper classes in generated code, diagram labels, and ``Python`` layers by explicit mapping.

The end-to-end case builds a real plugin package (pyproject with an entry point, a spec module and a torch
helper module), installs it with pip into a folder, and in a fresh interpreter with only that folder added
runs a net using the plugin's layer, exports it to ONNX (checked in onnxruntime against the runtime) and
generates code (exec'd and compared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import prototxt2py
from prototxt2py.errors import ParseError, Prototxt2pyError, UnsupportedLayerError
from prototxt2py.layers import (
    PYTHON_REGISTRY,
    REGISTRY,
    LayerSpec,
    PluginError,
    PythonLayerSpec,
    RegistrationError,
    call,
    get_spec,
    register,
)
from prototxt2py.reader import read_net_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry():
    """Registrations made by a test are undone after it (the registry is process-wide)."""
    saved, saved_py = dict(REGISTRY), dict(PYTHON_REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)
    PYTHON_REGISTRY.clear()
    PYTHON_REGISTRY.update(saved_py)


def graph_of(text: str, **kwargs):
    return prototxt2py.graph(read_net_text(textwrap.dedent(text), "net.prototxt"), **kwargs)


# -- registration ----------------------------------------------------------------------------------------------
def test_registering_a_taken_type_raises_naming_both_specs(registry) -> None:
    with pytest.raises(RegistrationError, match=r"layer type 'ReLU' is already registered by "
                       r"prototxt2py\.layers\.elementwise\.ReLU; .*MyReLU cannot register it again "
                       r"\(use @register\(replace=True\)"):
        @register
        class MyReLU(LayerSpec):
            type = "ReLU"
    assert type(get_spec("ReLU")).__module__ == "prototxt2py.layers.elementwise"


def test_an_alias_clash_raises_and_nothing_is_half_registered(registry) -> None:
    with pytest.raises(RegistrationError, match="layer type 'DepthwiseConvolution' is already registered"):
        @register
        class Mine(LayerSpec):
            type = "MyBrandNewType"
            aliases = ("DepthwiseConvolution",)
    assert get_spec("MyBrandNewType") is None


def test_replace_true_replaces_on_purpose(registry) -> None:
    @register(replace=True)
    class MyReLU(LayerSpec):
        type = "ReLU"

    assert isinstance(get_spec("ReLU"), MyReLU)

    @register
    class Fresh(LayerSpec):
        type = "FreshType"

    with pytest.raises(RegistrationError, match="'FreshType' is already registered by .*Fresh"):
        @register
        class Fresh2(LayerSpec):
            type = "FreshType"


def test_register_needs_a_type() -> None:
    with pytest.raises(RegistrationError, match="has no 'type'"):
        @register
        class Nameless(LayerSpec):
            pass


# -- raw text of fields our schema lacks -------------------------------------------------------------------------
GATE_NET = """
    name: "gated"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
    layer { name: "gate" type: "TestGate" bottom: "data" top: "gate"
            test_gate_param { scale: 2.5 mode: SIGMOID names: ["a", "b"] inner { k: 3 } } }
"""


class _TestGate(LayerSpec):
    type = "TestGate"

    def attrs(self, layer):
        p = layer.unknown.get_message("test_gate_param", required=True)
        p.check_fields(("scale", "mode", "names", "inner"))
        inner = p.get_message("inner")
        return (p.get_float("scale", 1.0), p.get_enum("mode", ("TANH", "SIGMOID"), "TANH"), p.get_strs("names"),
                inner.get_int("k") if inner else 0)

    def module(self, node):
        return call("nn.Identity")


def test_plugin_reads_its_unknown_param_block(registry) -> None:
    register(_TestGate)
    g = graph_of(GATE_NET)
    assert g.node("gate").attrs == (2.5, "SIGMOID", ("a", "b"), 3)
    assert g.blob_shapes()["gate"] == (2, 3, 4, 5)



class _ClaimingGate(_TestGate):
    param_field = "test_gate_param"


def test_a_specs_declared_param_block_is_not_warned_about(registry) -> None:
    """``test_gate_param`` is the block a spec declares as its own (``param_field``) and reads: no "dropped"
    warning; another unknown field still gets one, and so does the block while no spec declares it."""
    text = GATE_NET.replace("inner { k: 3 } }", "inner { k: 3 } } other_param { x: 1 }")
    both = ["dropped unknown field 'test_gate_param' in caffe.LayerParameter",
            "dropped unknown field 'other_param' in caffe.LayerParameter"]
    assert [w.split(": ", 1)[1] for w in read_net_text(text).warnings] == both
    register(_TestGate)  # reads the block without declaring it
    assert [w.split(": ", 1)[1] for w in read_net_text(text).warnings] == both
    register(_ClaimingGate, replace=True)
    assert [w.split(": ", 1)[1] for w in read_net_text(text).warnings] == both[1:]


def test_a_built_in_types_misplaced_block_is_still_warned_about() -> None:
    """``deconvolution_param`` is no field of Caffe's LayerParameter: dropped, and said so."""
    text = ('layer { name: "up" type: "Deconvolution" bottom: "x" top: "up" deconvolution_param { num_output: 6 } '
            'convolution_param { num_output: 4 kernel_size: 1 } }\n'
            'layer { name: "r" type: "ReLU" bottom: "up" top: "r" re_lu_param { negative_slope: 0.5 } }\n')
    assert [w.split(": ", 1)[1] for w in read_net_text(text).warnings] == [
        "dropped unknown field 'deconvolution_param' in caffe.LayerParameter",
        "dropped unknown field 're_lu_param' in caffe.LayerParameter"]

@pytest.mark.parametrize(("block", "at", "message"), [
    ("scale: abc", "abc", "expected a number for field 'scale' of test_gate_param, got 'abc'"),
    ("scale: 1 scale: 2", "scale", "test_gate_param has field 'scale' more than once"),
    ("mode: RELU", "RELU", "unknown value 'RELU' for field 'mode' of test_gate_param (expected one of: TANH, "
                           "SIGMOID)"),
    ("inner { k: 1.5 }", "1.5", "expected an integer for field 'k' of inner, got '1.5'"),
    ("sclae: 2", "sclae", "test_gate_param has no field named 'sclae' (expected one of: scale, mode, names, "
                          "inner)"),
    ("scale: nan", "nan", "field 'scale' of test_gate_param is 'nan', not a finite number"),
    ("inner: 3", "inner", "field 'inner' of test_gate_param must be a message { ... }, got '3'"),
])
def test_raw_block_errors_point_at_the_value(registry, block: str, at: str, message: str) -> None:
    register(_TestGate)
    text = textwrap.dedent(GATE_NET).replace('scale: 2.5 mode: SIGMOID names: ["a", "b"] inner { k: 3 }', block)
    line = text.splitlines()[4]
    col = line.rindex(at) + 1 if at != "inner" else line.index("3") + 1
    with pytest.raises(ParseError) as e:
        graph_of(text)
    assert str(e.value) == f"net.prototxt:5:{col}: layer 'gate': {message}"


def test_missing_raw_block_is_named(registry) -> None:
    register(_TestGate)
    text = GATE_NET.replace("""
            test_gate_param { scale: 2.5 mode: SIGMOID names: ["a", "b"] inner { k: 3 } }""", "")
    with pytest.raises(ParseError, match=r"net.prototxt:4:7: layer 'gate': LayerParameter needs field "
                                         r"'test_gate_param'"):
        graph_of(text)


def test_unknown_fields_inside_a_known_message(registry) -> None:
    @register
    class Reads(LayerSpec):
        type = "ReadsExtra"

        def attrs(self, layer):
            return layer.unknown_in("convolution_param").get_int("fork_extra"), layer.convolution_param.num_output

    g = graph_of("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }
        layer { name: "x" type: "ReadsExtra" bottom: "data" top: "y"
                convolution_param { num_output: 4 fork_extra: 0x10 } }
    """)
    assert g.node("x").attrs == (16, 4)


# -- diagram labels --------------------------------------------------------------------------------------------
def test_diagram_label_comes_from_the_spec(registry, tmp_path: Path) -> None:
    @register
    class Labelled(_TestGate):
        type = "TestGate"

        def diagram_label(self, attrs):
            return [f"scale: {attrs[0]:g}", attrs[1]]

        def diagram_edge_label(self, attrs):
            return attrs[1].lower()

    path = tmp_path / "net.prototxt"
    path.write_text(textwrap.dedent(GATE_NET))
    dot = prototxt2py.draw(path).source
    assert "gate\\n(TestGate)\\nscale: 2.5\\nSIGMOID" in dot
    assert 'label=sigmoid' in dot


# -- Python layers -----------------------------------------------------------------------------------------------
PY_NET = """
    name: "pynet"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
    layer { name: "py" type: "Python" bottom: "data" top: "a" top: "b"
            python_param { module: "user_layers" layer: "SplitScale" param_str: "3.5" } }
    layer { name: "relu" type: "ReLU" bottom: "b" top: "b" }
"""


class SplitScale(nn.Module):
    """A Python layer's computation given by the caller: two tops, one parameter blob per channel."""

    def __init__(self, param_str: str) -> None:
        super().__init__()
        self.factor = float(param_str)
        self.weight = nn.Parameter(torch.arange(3, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.factor, (x * self.weight.view(1, -1, 1, 1)).sum(1, keepdim=True)


def test_python_layer_mapped_to_a_module_runs_and_generates_code() -> None:
    net = prototxt2py.load(read_net_text(textwrap.dedent(PY_NET), "net.prototxt"),
                           python_layers={"user_layers.SplitScale": SplitScale})
    assert net.graph.blob_shapes()["b"] == (2, 1, 4, 4)
    assert [tuple(b.shape) for b in net.layer_blobs("py")] == [(3,)]
    x = torch.randn(2, 3, 4, 4)
    out = net(x)
    torch.testing.assert_close(out["a"], x * 3.5, rtol=0, atol=0)
    torch.testing.assert_close(out["b"], (x * torch.arange(3.0).view(1, -1, 1, 1)).sum(1, keepdim=True).relu())
    from prototxt2py.backends.codegen import generate

    code = generate(net.graph)
    assert "class SplitScale(nn.Module):" in code.source and 'SplitScale("3.5")' in code.source
    ns: dict = {}
    exec(compile(code.source, "<generated>", "exec"), ns)  # noqa: S102 - our own generated code, in a test
    module = ns[code.class_name]()
    state = net.state_dict()
    module.load_state_dict({new: state[old] for old, new in code.keys.items()}, strict=True)
    got = module(x)
    torch.testing.assert_close(got["a"], out["a"], rtol=0, atol=0)
    torch.testing.assert_close(got["b"], out["b"], rtol=0, atol=0)
    assert "user_layers" not in sys.modules  # the model's module is never imported


def test_python_layer_mapped_to_a_factory_and_a_spec(registry) -> None:
    net = prototxt2py.load(read_net_text(textwrap.dedent(PY_NET), "net.prototxt"),
                           python_layers={"user_layers.SplitScale": lambda s: SplitScale(str(2 * float(s)))})
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(net(x)["a"], x * 7.0, rtol=0, atol=0)

    @register
    class SplitSpec(PythonLayerSpec):
        python_layer = "user_layers.SplitScale"

        def infer_shapes(self, node, in_shapes):
            n, _, h, w = in_shapes[0]
            return [tuple(in_shapes[0]), (n, 1, h, w)]

        def module(self, node):
            return call(f"{__name__}:SplitScale", node.attrs.param_str)

    g = graph_of(PY_NET)  # found in the registry by python_param.module + layer
    assert isinstance(g.node("py").spec, SplitSpec) and g.blob_shapes()["b"] == (2, 1, 4, 4)
    with pytest.raises(RegistrationError, match="Python layer 'user_layers.SplitScale' is already registered"):
        register(type("Other", (PythonLayerSpec,), {"python_layer": "user_layers.SplitScale"}))


def test_unmapped_python_layer_says_how_to_map_it() -> None:
    g = graph_of(PY_NET)
    with pytest.raises(UnsupportedLayerError, match=r"no PyTorch implementation for: 'Python' \(layer 'py' at "
                       r"net.prototxt:4:7; map it explicitly: prototxt2py.load\(\.\.\., python_layers="
                       r"\{'user_layers.SplitScale': MyLayer\}\) \(also caffe.Net and caffe.SGDSolver\) with a "
                       r"caffe.Layer class"):
        prototxt2py.load(g)
    with pytest.raises(PluginError, match="python_layers keys are 'module.Layer'"):
        graph_of(PY_NET, python_layers={"SplitScale": SplitScale})
    with pytest.raises(PluginError, match="must be a LayerSpec subclass, an nn.Module class or a factory"):
        graph_of(PY_NET, python_layers={"user_layers.SplitScale": 3})
    assert "user_layers" not in sys.modules


def test_python_layer_returning_the_wrong_number_of_tops() -> None:
    with pytest.raises(Prototxt2pyError, match=r"layer 'py': python_layers\['user_layers.SplitScale'\] returned 1 "
                                               r"value\(s\) for 2 top\(s\)"):
        graph_of(PY_NET, python_layers={"user_layers.SplitScale": lambda s: nn.Identity()})


# -- entry points ------------------------------------------------------------------------------------------------
def _fake_distribution(site: Path, dist: str, module: str, body: str) -> None:
    """An installed distribution as importlib.metadata sees it: a dist-info folder with an entry point."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[prototxt2py.layers]\nbroken = {module}\n")
    (site / f"{module}.py").write_text(body)


def _cli(args: list[str], extra_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(extra_path), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "prototxt2py", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_broken_plugin_is_named_and_only_loaded_on_a_miss(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, "broken-plugin", "broken_plugin_mod", "import prototxt2py_missing_dependency\n")
    plain = tmp_path / "plain.prototxt"
    plain.write_text('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 2 } } }\n'
                     'layer { name: "r" type: "ReLU" bottom: "d" top: "r" }\n')
    ok = _cli(["summary", str(plain)], site, tmp_path)
    assert ok.returncode == 0, ok.stderr  # every type found: the entry points are never loaded
    custom = tmp_path / "custom.prototxt"
    custom.write_text(plain.read_text().replace('type: "ReLU"', 'type: "FancyReLU"'))
    bad = _cli(["summary", str(custom)], site, tmp_path)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert ("plugin entry point 'broken = broken_plugin_mod' (group prototxt2py.layers) of distribution "
            "'broken-plugin 1.0' failed to load: ModuleNotFoundError: No module named "
            "'prototxt2py_missing_dependency'") in lines[0]


def test_a_plugin_registering_a_taken_type_is_named(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, "clash-plugin", "clash_plugin_mod", textwrap.dedent("""
        from prototxt2py.layers import LayerSpec, register

        @register
        class Convolution(LayerSpec):
            type = "Convolution"
    """))
    out = _cli(["layers"], site, tmp_path)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "'broken = clash_plugin_mod' (group prototxt2py.layers) of distribution 'clash-plugin 1.0'" in out.stderr
    assert "RegistrationError: layer type 'Convolution' is already registered" in out.stderr


# -- an installed plugin package, end to end ---------------------------------------------------------------------
PLUGIN_FILES = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "p2p-demo-plugin"
        version = "0.3"

        [project.entry-points."prototxt2py.layers"]
        demo = "p2p_demo_plugin"

        [tool.setuptools]
        packages = ["p2p_demo_plugin"]
    """,
    "p2p_demo_plugin/__init__.py": '''
        """ChannelGate, the layer of an imaginary Caffe fork: y = x * scale * act(gate[c])."""

        from prototxt2py.layers import Filler, LayerSpec, call, register


        @register
        class ChannelGate(LayerSpec):
            type = "ChannelGate"
            family = "demo"
            summary = "x * scale * tanh|sigmoid(gate[c]) (p2p-demo-plugin)"
            blob_names = ("gate",)
            param_field = "channel_gate_param"  # its own block, read from layer.unknown: not warned about

            def attrs(self, layer):
                p = layer.unknown.get_message("channel_gate_param", required=True)
                p.check_fields(("scale", "activation"))
                return p.get_float("scale", 1.0), p.get_enum("activation", ("TANH", "SIGMOID"), "TANH")

            def param_shapes(self, node, in_shapes):
                return [(in_shapes[0][1],)]

            def fillers(self, node):
                return [Filler(type="uniform", min=-1.0, max=1.0)]

            def module(self, node):
                scale, activation = node.attrs
                return call("p2p_demo_plugin.nn:ChannelGateModule", node.param_shapes[0][0], scale,
                            activation == "SIGMOID")

            def to_onnx(self, node, ctx):
                scale, activation = node.attrs
                gate = ctx.broadcast_const(ctx.param(0), 1, len(ctx.in_shape(0)), "gate")
                g = ctx.add("Sigmoid" if activation == "SIGMOID" else "Tanh", [gate])
                g = ctx.add("Mul", [g, ctx.scalar(scale)])
                ctx.add("Mul", [ctx.input(0), g], ctx.output(0))

            def diagram_label(self, attrs):
                return [f"scale: {attrs[0]:g}", attrs[1]]
    ''',
    "p2p_demo_plugin/nn.py": '''
        """The torch side of the plugin (imported only when a module is built)."""

        import torch
        from torch import nn


        def gate_activation(x: torch.Tensor, sigmoid: bool) -> torch.Tensor:
            return torch.sigmoid(x) if sigmoid else torch.tanh(x)


        class ChannelGateModule(nn.Module):
            def __init__(self, channels: int, scale: float, sigmoid: bool) -> None:
                super().__init__()
                self.scale = scale
                self.sigmoid = sigmoid
                self.gate = nn.Parameter(torch.zeros(channels))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                g = gate_activation(self.gate, self.sigmoid) * self.scale
                return x * g.view(1, -1, *([1] * (x.dim() - 2)))
    ''',
}

PLUGIN_NET = """
    name: "gated"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
    layer { name: "gate" type: "ChannelGate" bottom: "conv" top: "gate"
            channel_gate_param { scale: 2.0 activation: SIGMOID } }
    layer { name: "relu" type: "ReLU" bottom: "gate" top: "gate" }
"""

PLUGIN_SCRIPT = r'''
import json, sys
import numpy as np, onnxruntime, torch
import prototxt2py
from prototxt2py.cli import main

def cli(*args):
    try:
        main(list(args), standalone_mode=False)
    except SystemExit as e:
        assert not e.code, e.code

report = {}
cli("convert", "net.prototxt", "--to", "caffemodel", "-o", "w.caffemodel")  # fillers, once
net = prototxt2py.load("net.prototxt", weights="w.caffemodel")
report["spec_module"] = type(net.graph.node("gate").spec).__module__
x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    blobs = net(x, all_blobs=True)
    gate = net.layer_blobs("gate")[0]
    expected = (blobs["conv"] * 2.0 * torch.sigmoid(gate).view(1, -1, 1, 1)).relu()
report["runtime_vs_formula"] = float((blobs["gate"] - expected).abs().max())

cli("convert", "net.prototxt", "--weights", "w.caffemodel", "--to", "onnx", "-o", "net.onnx")
session = onnxruntime.InferenceSession("net.onnx", providers=["CPUExecutionProvider"])
(onnx_out,) = session.run(["gate"], {"data": x.numpy()})
report["onnx_vs_runtime"] = float(np.abs(onnx_out - blobs["gate"].numpy()).max())

cli("convert", "net.prototxt", "--weights", "w.caffemodel", "--to", "python", "-o", "gen")
source = open("gen/gated.py").read()
report["generated_mentions_plugin"] = "p2p_demo_plugin" in source or "prototxt2py" in source.split('"""', 2)[2]
ns = {}
exec(compile(source, "gen/gated.py", "exec"), ns)
module = ns["Gated"]()
module.load_state_dict(torch.load("gen/gated.pt", weights_only=True))
with torch.no_grad():
    report["generated_vs_runtime"] = float((module(x) - blobs["gate"]).abs().max())

cli("draw", "net.prototxt", "net.dot")
report["label"] = "(ChannelGate)\\nscale: 2\\nSIGMOID" in open("net.dot").read()
from prototxt2py.layer_table import layer_table
report["listed"] = [line for line in layer_table().splitlines() if line.startswith("ChannelGate")]
from prototxt2py.reader import read_net
report["warnings"] = read_net("net.prototxt").warnings
print("REPORT " + json.dumps(report))
'''


def _pip_install(source: Path, target: Path) -> None:
    """``pip install --no-deps --no-build-isolation --target`` with this interpreter's pip (offline: the
    build backend, setuptools, comes from the same environment)."""
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(source)], capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        pytest.fail(f"pip install of the demo plugin failed:\n{out.stdout}\n{out.stderr}")


@pytest.mark.slow
def test_installed_plugin_package_runs_exports_and_generates_code(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    pytest.importorskip("onnxruntime")
    source = tmp_path / "src"
    for rel, text in PLUGIN_FILES.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(textwrap.dedent(text).lstrip())
    site = tmp_path / "site"
    _pip_install(source, site)
    assert (site / "p2p_demo_plugin" / "nn.py").is_file()
    work = tmp_path / "work"
    work.mkdir()
    (work / "net.prototxt").write_text(textwrap.dedent(PLUGIN_NET))
    (work / "check.py").write_text(PLUGIN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    out = subprocess.run([sys.executable, "check.py"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert out.returncode == 0 and lines, out.stdout + out.stderr
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["spec_module"] == "p2p_demo_plugin"  # loaded through its entry point
    assert report["runtime_vs_formula"] < 1e-6
    assert report["onnx_vs_runtime"] < 1e-5
    assert report["generated_vs_runtime"] == 0.0
    assert report["generated_mentions_plugin"] is False  # the helper's source is copied, not imported
    assert report["label"] is True
    assert len(report["listed"]) == 1 and report["listed"][0].split()[-1] == "demo"
    assert report["warnings"] == []  # the declared channel_gate_param is the plugin's, not a dropped field
    assert not np.isnan(report["onnx_vs_runtime"])


def test_pycaffe_net_takes_python_layers(tmp_path: Path) -> None:
    from prototxt2py import caffe

    path = tmp_path / "net.prototxt"
    path.write_text(textwrap.dedent(PY_NET))
    net = caffe.Net(str(path), caffe.TEST, python_layers={"user_layers.SplitScale": SplitScale})
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    net.blobs["data"].data[...] = x
    out = net.forward()
    np.testing.assert_allclose(out["a"], x * 3.5, rtol=0, atol=0)
    assert [p.data.shape for p in net.params["py"]] == [(3,)]
