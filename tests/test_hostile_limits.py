"""Resource guards (prototxt2py.limits): each refuses before allocating, names what to raise, and can be raised."""

from __future__ import annotations

import pytest

from prototxt2py import limits
from prototxt2py.errors import Location, Prototxt2pyError, ResourceLimitError


@pytest.fixture(autouse=True)
def fresh_limits(monkeypatch: pytest.MonkeyPatch):
    for env, _ in limits._SPEC.values():
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(limits, "_current", None)
    yield
    monkeypatch.setattr(limits, "_current", None)


def test_defaults_follow_caffe() -> None:
    lim = limits.current()
    assert lim.max_blob_elements == 2**31 - 1  # Blob::Reshape: "blob size exceeds INT_MAX"
    assert lim.max_text_bytes == 16 << 20 and lim.max_binary_bytes == 2**31 - 1


def test_blob_elements() -> None:
    assert limits.check_shape((10, 3, 224, 224), "top 'data'") == 10 * 3 * 224 * 224
    assert limits.check_shape((0, 2**31 - 1), "top 'x'") == 0
    with pytest.raises(ResourceLimitError) as e:
        limits.check_shape((1, 1_000_000, 1_000_000), "top 'tiled'", layer="tile",
                           location=Location("n.prototxt", 3, 1))
    msg = str(e.value)
    assert msg.startswith("n.prototxt:3:1: layer 'tile': top 'tiled': shape (1, 1000000, 1000000) has ")
    assert "1,000,000,000,000 elements" in msg and "PROTOTXT2PY_MAX_BLOB_ELEMENTS" in msg


@pytest.mark.parametrize(("shape", "why"), [
    ((1, 2**31), "beyond Caffe's 32-bit int dims"),
    ((1, -3), "negative (-3)"),
    ((1, 2.5), "not an integer"),
    ((1, float("inf")), "not an integer"),
    ((1, float("nan")), "not an integer"),
])
def test_dims(shape: tuple, why: str) -> None:
    with pytest.raises(ResourceLimitError, match=why.replace("(", r"\(").replace(")", r"\)")):
        limits.check_shape(shape, "top 'y'")


def test_many_axes_message_is_short() -> None:
    with pytest.raises(ResourceLimitError) as e:
        limits.check_shape((2,) * 1000, "top 'y'")
    assert len(str(e.value)) < 300 and "... 1000 axes" in str(e.value)


def test_env_raises_and_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTOTXT2PY_MAX_BLOB_ELEMENTS", "1e13")
    monkeypatch.setattr(limits, "_current", None)
    assert limits.check_shape((1, 1_000_000, 1_000_000), "t") == 10**12
    monkeypatch.setenv("PROTOTXT2PY_MAX_BLOB_ELEMENTS", "none")
    monkeypatch.setattr(limits, "_current", None)
    assert limits.current().max_blob_elements is None
    with pytest.raises(ResourceLimitError, match="dim 1 = 2147483648"):  # the int32 dims are Caffe's, always
        limits.check_shape((1, 2**31), "t")
    monkeypatch.setenv("PROTOTXT2PY_MAX_BLOB_ELEMENTS", "lots")
    monkeypatch.setattr(limits, "_current", None)
    with pytest.raises(ResourceLimitError, match="PROTOTXT2PY_MAX_BLOB_ELEMENTS='lots' is not a number"):
        limits.current()


def test_override_and_configure() -> None:
    with limits.override(max_blob_elements=10):
        with pytest.raises(ResourceLimitError):
            limits.check_shape((11,), "t")
    assert limits.check_shape((11,), "t") == 11
    limits.configure(max_blob_elements=5)
    with pytest.raises(ResourceLimitError):
        limits.check_shape((6,), "t")


def test_param_bytes() -> None:
    limits.check_param_bytes(61_000_000)  # AlexNet
    with pytest.raises(ResourceLimitError, match="parameters need 20.0 GiB .* over the 16.0 GiB limit"):
        limits.check_param_bytes(5 << 30)
    with limits.override(max_param_bytes=None):
        limits.check_param_bytes(5 << 30)


def test_temporaries() -> None:
    limits.check_temporary((64, 3 * 11 * 11, 55 * 55), "Im2col columns")
    with pytest.raises(ResourceLimitError, match="layer 'pool': Im2col columns would need .* PROTOTXT2PY_MAX_TEMP"):
        limits.check_temporary((1, 3 * 4000 * 4000, 4000 * 4000), "Im2col columns", layer="pool")
    with pytest.raises(ResourceLimitError):
        limits.check_temporary(3 << 30, "Tile output")  # 12 GiB of float32


def test_file_size() -> None:
    limits.check_file_size(1 << 20, "text")
    with pytest.raises(ResourceLimitError, match="text file of 200.0 MiB is over the 16.0 MiB limit"):
        limits.check_file_size(200 << 20, "text", Location("big.prototxt"))
    with pytest.raises(ResourceLimitError, match="binary file of 3.0 GiB"):
        limits.check_file_size(3 << 30, "binary")


class _Value:
    def __init__(self, blob: str, shape):
        self.blob, self.shape = blob, shape


class _Node:
    def __init__(self, name, tops, outputs, param_shapes):
        self.name, self.tops, self.outputs, self.param_shapes = name, tops, outputs, param_shapes
        self.location = Location("n.prototxt", 7, 1)


class _Graph:
    def __init__(self, nodes, values):
        self.nodes, self.values = nodes, values


def test_check_graph_names_the_layer() -> None:
    values = {0: _Value("data", (1, 3, 8, 8)), 1: _Value("t", (1, 3, 10**6, 10**6))}
    g = _Graph([_Node("data", ["data"], [0], []), _Node("tile", ["t"], [1], [])], values)
    with pytest.raises(ResourceLimitError, match=r"^n.prototxt:7:1: layer 'tile': top 't'"):
        limits.check_graph(g)
    values[1].shape = None  # unknown shapes are skipped
    limits.check_graph(g)
    big = _Graph([_Node("fc", ["y"], [], [(2**29, 2), (2**29, 2)])], {})
    with pytest.raises(ResourceLimitError, match="parameters need 8.0 GiB"):
        with limits.override(max_param_bytes=4 << 30):
            limits.check_graph(big)


def test_check_graph_on_a_real_graph() -> None:
    import prototxt2py
    from prototxt2py.reader import read_net_text

    text = ('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n'
            'layer { name: "t" type: "Tile" bottom: "d" top: "t" tile_param { axis: 1 tiles: 2000000000 } }\n')
    # shape inference runs the same check, so building the graph is already refused
    with pytest.raises(ResourceLimitError, match="tile.prototxt:2:7: layer 't': top 't': dim 1 = 6000000000 is beyond"):
        prototxt2py.graph(read_net_text(text, "tile.prototxt"))
    limits.check_graph(prototxt2py.graph(read_net_text(text.replace("2000000000", "2"), "tile.prototxt")))
    assert issubclass(ResourceLimitError, Prototxt2pyError)


def test_shape_inference_refuses_a_huge_tile_before_allocating(tmp_path) -> None:
    """The guard runs inside shape inference: `summary` of a Tile to 4e10 elements is one located line, exit 1."""
    import subprocess
    import sys
    from pathlib import Path

    net = tmp_path / "tile.prototxt"
    net.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1000 dim: 1000 } } }\n'
                   'layer { name: "t" type: "Tile" bottom: "x" top: "y" tile_param { tiles: 40000 } }\n')
    exe = Path(sys.executable).parent / "prototxt2py"
    r = subprocess.run([str(exe), "summary", str(net)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "tile.prototxt:2:7: layer 't'" in r.stderr and "40,000,000,000 elements" in r.stderr


def test_onnx_export_checks_its_temporaries_before_allocating() -> None:
    """Im2col's one-hot kernels grow with the square of the window (a 3000x3000 window: 8.1e13 floats) and the
    AVE pooling divisor map with the output: both are refused, naming the layer, before numpy allocates."""
    import prototxt2py
    from prototxt2py.backends.onnx_export import to_onnx_model
    from prototxt2py.reader import read_net_text

    im2col = ('layer { name: "in" type: "Input" top: "x" '
              'input_param { shape { dim: 1 dim: 1 dim: 3000 dim: 3000 } } }\n'
              'layer { name: "cols" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 3000 } }\n')
    with pytest.raises(ResourceLimitError, match=r"im2col.prototxt:2:7: layer 'cols': Im2col's one-hot kernel .* over"):
        to_onnx_model(prototxt2py.graph(read_net_text(im2col, "im2col.prototxt")))
    small = im2col.replace("3000", "4")
    with limits.override(max_temp_bytes=4 * 16 * 16 - 1):  # one float short of the (16, 16) one-hot kernel
        with pytest.raises(ResourceLimitError, match="Im2col's one-hot kernel"):
            to_onnx_model(prototxt2py.graph(read_net_text(small, "im2col.prototxt")))
    with limits.override(max_temp_bytes=4 * 16 * 16):
        assert len(to_onnx_model(prototxt2py.graph(read_net_text(small, "im2col.prototxt"))).graph.node) == 1

    pool = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 40 dim: 40 } } }\n'
            'layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
            'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n')
    graph = prototxt2py.graph(read_net_text(pool, "pool.prototxt"))
    out = graph.values[graph.outputs[0]].shape
    with limits.override(max_temp_bytes=8 * out[2] * out[3] - 1):
        with pytest.raises(ResourceLimitError, match="layer 'p': the AVE pooling divisor map"):
            to_onnx_model(graph)
    with limits.override(max_temp_bytes=8 * out[2] * out[3]):
        to_onnx_model(graph)
