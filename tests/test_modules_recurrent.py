"""RNN, LSTM and LSTMUnit as plain runtime modules (``prototxt2py.nn.recurrent``): the runtime builds exactly
the spec's ``Call``, blobs are named and ordered as Caffe's (x_static weight third), weight and bias fillers go
to the matrices and the vectors, and modules copy/pickle with no IR references, carried state included."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from test_modules_losses import check_modules, net_of

SHAPES = {"x": (3, 2, 4), "cont": (3, 2), "xs": (2, 5), "h0": (1, 2, 6), "c0": (1, 2, 6)}
FILLERS = 'weight_filler { type: "constant" value: 2 } bias_filler { type: "constant" value: 3 }'


@pytest.mark.parametrize(
    ("kind", "bottoms", "tops", "expose", "kwargs", "names"),
    [
        ("RNN", "x cont", "o", "", {}, ("W_xh", "b_h", "W_hh", "W_ho", "b_o")),
        ("RNN", "x cont xs h0", "o hT", "expose_hidden: true", {"static_size": 5, "expose_hidden": True},
         ("W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o")),
        ("LSTM", "x cont xs", "h", "", {"static_size": 5}, ("W_xc", "b_c", "W_xc_static", "W_hc")),
        ("LSTM", "x cont h0 c0", "h hT cT", "expose_hidden: true", {"expose_hidden": True}, ("W_xc", "b_c", "W_hc")),
    ],
)
def test_recurrent_calls_blobs_and_fillers(kind, bottoms, tops, expose, kwargs, names) -> None:
    layer = (f'layer {{ name: "r" type: "{kind}" ' + " ".join(f'bottom: "{b}"' for b in bottoms.split()) + " "
             + " ".join(f'top: "{t}"' for t in tops.split()) + f" recurrent_param {{ num_output: 6 {expose} "
             f"{FILLERS} }} }}")
    net = net_of(SHAPES, layer)
    node = net.graph.node("r")
    recipe = node.spec.module(node)
    assert (recipe.target, recipe.args, dict(recipe.kwargs)) == (kind, (4, 6), kwargs)
    assert check_modules(net) == [kind]
    module = net.layer("r")
    assert module.blob_names == names
    assert [tuple(b.shape) for b in net.layer_blobs("r")] == [tuple(s) for s in node.param_shapes]
    for name, blob in zip(names, net.layer_blobs("r"), strict=True):
        assert torch.all(blob == (3.0 if blob.dim() == 1 else 2.0)), name


def test_carried_state_survives_copy_and_reset() -> None:
    """The state carried to the next forward is plain module state: a deep copy continues the stream like the
    original, and ``reset()`` on the copy does not touch the original."""
    net = net_of(SHAPES, 'layer { name: "r" type: "LSTM" bottom: "x" bottom: "cont" top: "h" recurrent_param { '
                         'num_output: 6 weight_filler { type: "gaussian" std: 0.3 } } }')
    x, cont = torch.randn(3, 2, 4), torch.ones(3, 2)
    module = net.layer("r")
    module(x, cont)
    twin = copy.deepcopy(module)
    restored = pickle.loads(pickle.dumps(module))
    want = module(x, cont)
    torch.testing.assert_close(twin(x, cont), want, rtol=0, atol=0)
    torch.testing.assert_close(restored(x, cont), want, rtol=0, atol=0)
    twin.reset()
    assert module._carried is not None
    assert not torch.equal(twin(x, cont), module(x, cont))


def test_lstm_unit_module_and_double() -> None:
    net = net_of({"c": (1, 2, 3), "g": (1, 2, 12), "k": (1, 2)},
                 'layer { name: "u" type: "LSTMUnit" bottom: "c" bottom: "g" bottom: "k" top: "c1" top: "h1" }')
    assert check_modules(net) == ["LSTMUnit"]
    unit = net.layer("u").double()
    c, g = torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(1, 2, 12, dtype=torch.float64)
    c1, h1 = unit(c, g, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    i, f, o, gg = (t.reshape(2, 3) for t in g.reshape(2, 4, 3).unbind(1))
    f = torch.sigmoid(f) * torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    want_c = f * c.reshape(2, 3) + torch.sigmoid(i) * torch.tanh(gg)
    torch.testing.assert_close(c1.reshape(2, 3), want_c)
    torch.testing.assert_close(h1.reshape(2, 3), torch.sigmoid(o) * torch.tanh(want_c))


def test_plain_filler_variance_norm_is_honoured() -> None:
    """Fillers reach the runtime as plain values (``variance_norm`` by name): xavier FAN_OUT on W_xc
    (4H, I) = (200, 4) draws from +-sqrt(3 / fan_out) with fan_out = 200, not fan_in = 4's +-0.87."""
    net = net_of({"x": (3, 2, 4), "cont": (3, 2)},
                 'layer { name: "r" type: "LSTM" bottom: "x" bottom: "cont" top: "h" recurrent_param { '
                 'num_output: 50 weight_filler { type: "xavier" variance_norm: FAN_OUT } } }')
    w = net.layer_blobs("r")[0].detach()
    assert tuple(w.shape) == (200, 4)
    assert 0.1 < float(w.abs().max()) <= (3 / 200) ** 0.5
