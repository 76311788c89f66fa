"""Recurrent layers where the golden suite has no case: LSTMUnit's forget-gate gradient with a non-binary
``cont``, the hidden state carried over between forward passes (Caffe copies h_T into h_0 when
``expose_hidden`` is off), inputs with more than three axes, and bottom/top counts tied to expose_hidden.

Expected values are Caffe's formulas written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prototxt2py
from prototxt2py.errors import GraphError
from prototxt2py.reader import read_net_text

RNG = np.random.default_rng(7)


def load(shapes: dict[str, tuple[int, ...]], layer: str) -> prototxt2py.CaffeNet:
    tops = " ".join(f'top: "{n}"' for n in shapes)
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes.values())
    text = f'name: "t"\nlayer {{ name: "in" type: "Input" {tops} input_param {{ {dims} }} }}\n{layer}\n'
    return prototxt2py.load(read_net_text(text))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_lstm_unit_fractional_cont() -> None:
    """f = cont * sigmoid(x_f), and Caffe's gradient uses f (1 - f) (not cont * s (1 - s)) for any cont."""
    n, hid = 3, 2
    c_prev = RNG.standard_normal((1, n, hid)).astype(np.float32)
    x = RNG.standard_normal((1, n, 4 * hid)).astype(np.float32)
    cont = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    dc, dh = (RNG.standard_normal((1, n, hid)).astype(np.float32) for _ in range(2))
    net = load({"c_prev": c_prev.shape, "x": x.shape, "cont": cont.shape},
               'layer { name: "u" type: "LSTMUnit" bottom: "c_prev" bottom: "x" bottom: "cont" top: "c" top: "h" }')
    ct, xt = torch.from_numpy(c_prev).requires_grad_(True), torch.from_numpy(x).requires_grad_(True)
    out = net(c_prev=ct, x=xt, cont=torch.from_numpy(cont))
    ((out["c"] * torch.from_numpy(dc)).sum() + (out["h"] * torch.from_numpy(dh)).sum()).backward()

    i, fs, o = sigmoid(x[..., :hid]), sigmoid(x[..., hid:2 * hid]), sigmoid(x[..., 2 * hid:3 * hid])
    g = np.tanh(x[..., 3 * hid:])
    f = cont[..., None] * fs
    c = f * c_prev + i * g
    np.testing.assert_allclose(out["c"].detach().numpy(), c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["h"].detach().numpy(), o * np.tanh(c), rtol=1e-5, atol=1e-6)
    term = dc + dh * o * (1 - np.tanh(c) ** 2)
    want_x = np.concatenate([term * g * i * (1 - i), term * c_prev * f * (1 - f),
                             dh * np.tanh(c) * o * (1 - o), term * i * (1 - g * g)], axis=-1)
    np.testing.assert_allclose(xt.grad.numpy(), want_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ct.grad.numpy(), term * f, rtol=1e-5, atol=1e-6)


def test_state_carried_between_forwards() -> None:
    """Without expose_hidden Caffe starts each forward from the previous one's final state: two forwards of
    T steps with cont = 1 equal one forward of 2T steps; ``reset()`` forgets the state."""
    steps, n = 3, 2
    x = RNG.standard_normal((2 * steps, n, 2)).astype(np.float32)
    cont = np.ones((2 * steps, n), dtype=np.float32)
    cont[0] = 0
    for kind in ("LSTM", "RNN"):
        layer = (f'layer {{ name: "r" type: "{kind}" bottom: "x" bottom: "cont" top: "h" recurrent_param {{ '
                 'num_output: 3 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" } } }')
        short = load({"x": (steps, n, 2), "cont": (steps, n)}, layer)
        full = load({"x": x.shape, "cont": cont.shape}, layer)
        with torch.no_grad():
            for a, b in zip(full.layer_blobs("r"), short.layer_blobs("r"), strict=True):
                b.copy_(a)
            want = full(x=torch.from_numpy(x), cont=torch.from_numpy(cont))["h"].numpy()
            first = short(x=torch.from_numpy(x[:steps]), cont=torch.from_numpy(cont[:steps]))["h"].numpy()
            ones = torch.ones(steps, n)
            second = short(x=torch.from_numpy(x[steps:]), cont=ones)["h"].numpy()
            short.layer("r").reset()
            restarted = short(x=torch.from_numpy(x[steps:]), cont=ones)["h"].numpy()
            zero_start = load({"x": (steps, n, 2), "cont": (steps, n)}, layer)
            for a, b in zip(full.layer_blobs("r"), zero_start.layer_blobs("r"), strict=True):
                b.copy_(a)
            from_zero = zero_start(x=torch.from_numpy(x[steps:]), cont=ones)["h"].numpy()
        np.testing.assert_allclose(first, want[:steps], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(second, want[steps:], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(restarted, from_zero, rtol=1e-6, atol=1e-7)
        assert not np.allclose(restarted, second)


def test_rnn_flattens_trailing_axes() -> None:
    """x (T, N, 2, 3) is seen as T x N vectors of 6 (InnerProduct axis 2): W_xh is (H, 6)."""
    steps, n, hid = 2, 2, 3
    x = RNG.standard_normal((steps, n, 2, 3)).astype(np.float32)
    cont = np.array([[0, 0], [1, 0]], dtype=np.float32)
    net = load({"x": x.shape, "cont": cont.shape},
               'layer { name: "r" type: "RNN" bottom: "x" bottom: "cont" top: "o" recurrent_param { num_output: 3 '
               'weight_filler { type: "uniform" min: -1 max: 1 } bias_filler { type: "uniform" min: -1 max: 1 } } }')
    assert [tuple(b.shape) for b in net.layer_blobs("r")] == [(hid, 6), (hid,), (hid, hid), (hid, hid), (hid,)]
    w_xh, b_h, w_hh, w_ho, b_o = (b.detach().numpy() for b in net.layer_blobs("r"))
    h = np.zeros((n, hid), dtype=np.float32)
    want = []
    for t in range(steps):
        h = np.tanh((cont[t][:, None] * h) @ w_hh.T + x[t].reshape(n, 6) @ w_xh.T + b_h)
        want.append(np.tanh(h @ w_ho.T + b_o))
    got = net(x=torch.from_numpy(x), cont=torch.from_numpy(cont))["o"].detach().numpy()
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("bottoms", "tops", "params", "match"),
    [
        ("x cont h0", "h", "expose_hidden: true", "takes 4 or 5 bottoms"),
        ("x cont h0 c0", "h", "expose_hidden: true", "takes 3 top"),
        ("x cont", "h hT cT", "", "takes 1 top"),
        ("x cont", "h", "num_output: 0", "num_output"),
    ],
)
def test_lstm_counts(bottoms: str, tops: str, params: str, match: str) -> None:
    shapes = {"x": (2, 1, 2), "cont": (2, 1), "h0": (1, 1, 3), "c0": (1, 1, 3)}
    num = "" if "num_output" in params else "num_output: 3"
    layer = ('layer { name: "bad" type: "LSTM" ' + " ".join(f'bottom: "{b}"' for b in bottoms.split()) + " "
             + " ".join(f'top: "{t}"' for t in tops.split()) + f" recurrent_param {{ {num} {params} }} }}")
    with pytest.raises(GraphError, match=match) as info:
        load(shapes, layer)
    assert "bad" in str(info.value)


RNN_NET = """force_backward: true
layer { name: "input" type: "Input" top: "x" top: "cont" input_param { shape { dim: 2 dim: 1 dim: 1 }
  shape { dim: 2 dim: 1 } } }
layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" top: "o" recurrent_param { num_output: 1 } }
"""


def test_pycaffe_backward_starts_from_the_state_carried_into_the_pass(tmp_path) -> None:
    """A stream that continues (cont 1 at t = 0) starts from the previous pass's h_T, zeros on the first pass.
    Caffe's backward replays the unrolled net of *that* pass and leaves the carried state alone: the gradient
    and the next pass are those of Caffe (backward re-ran the module, from the state of the next pass, and
    advanced it once more). Expected values: the RNN unrolled by hand in float64."""
    from prototxt2py import caffe

    w_xh, b_h, w_hh, w_ho, b_o = 1.0, 0.2, 0.8, 1.5, 0.1
    x, cont = np.array([0.5, -1.0]), np.array([1.0, 1.0])

    def unrolled(h0: float) -> tuple[np.ndarray, np.ndarray, float]:
        hs, h = [], h0
        for t in range(2):
            h = np.tanh(w_hh * cont[t] * h + w_xh * x[t] + b_h)
            hs.append(h)
        o = np.tanh(w_ho * np.array(hs) + b_o)
        dh_next, dx = 0.0, np.zeros(2)
        for t in (1, 0):  # top diff 1 on every o_t
            dpre = ((1 - o[t] ** 2) * w_ho + dh_next) * (1 - hs[t] ** 2)
            dx[t], dh_next = dpre * w_xh, dpre * w_hh * cont[t]
        return o, dx, hs[-1]

    (tmp_path / "rnn.prototxt").write_text(RNN_NET)
    net = caffe.Net(str(tmp_path / "rnn.prototxt"), caffe.TEST)
    for i, v in enumerate((w_xh, b_h, w_hh, w_ho, b_o)):
        net.params["rnn"][i].data[...] = v
    net.blobs["x"].data[...] = x.reshape(2, 1, 1)
    net.blobs["cont"].data[...] = cont.reshape(2, 1)
    h = 0.0
    for _ in range(3):
        o, dx, h_next = unrolled(h)
        np.testing.assert_allclose(net.forward()["o"].ravel(), o, rtol=1e-5)
        net.blobs["o"].diff[...] = 1.0
        net.backward()
        np.testing.assert_allclose(net.blobs["x"].diff.ravel(), dx, rtol=1e-5)
        h = h_next
