"""Caffe's rules for the multipliers of shared parameters and the solver fields it checks (``Net::AppendParam``,
``SGDSolver``/``RMSPropSolver`` constructors, ``Regularize``): a shared blob's ``lr_mult``/``decay_mult`` is the
first one any layer using it sets, two set values must agree, and a layer cannot have more ``param {}`` blocks
than blobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import prototxt2py
from prototxt2py.errors import ShapeError
from prototxt2py.train import SolverError, get_solver

NET = """name: "share"
layer {{ name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 dim: 3 }}
    data_filler {{ type: "constant" value: 1 }} data_filler {{ type: "constant" value: 2 }} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "h" {first}
  inner_product_param {{ num_output: 3 weight_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "h" top: "out" {second}
  inner_product_param {{ num_output: 3 weight_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "label" top: "loss" }}
"""


def solver(tmp_path: Path, first: str, second: str, extra: str = "") -> str:
    (tmp_path / "net.prototxt").write_text(NET.format(first=first, second=second))
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.1\nlr_policy: "fixed"\nweight_decay: 0.1\n'
                    f"max_iter: 3\nsnapshot_after_train: false\n{extra}")
    return str(path)


def mults(s) -> list[tuple[str, int, float, float]]:
    return [(lp.layer, lp.index, lp.lr_mult, lp.decay_mult) for lp in s.learnables]


@pytest.mark.parametrize(("first", "second", "want"), [
    ('param { name: "w" } param { lr_mult: 0 }', 'param { name: "w" lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 }',
     (0.0, 0.0)),
    ('param { name: "w" } param { lr_mult: 0 }', 'param { name: "w" lr_mult: 3 } param { lr_mult: 0 }', (3.0, 1.0)),
    ('param { name: "w" decay_mult: 2 }', 'param { name: "w" }', (1.0, 2.0)),
    ('param { name: "w" lr_mult: 2 }', 'param { name: "w" lr_mult: 2 decay_mult: 5 }', (2.0, 5.0)),
])
def test_shared_multipliers_are_the_first_set(tmp_path: Path, first: str, second: str,
                                              want: tuple[float, float]) -> None:
    """The first case: ip1 owns ``w`` without multipliers, ip2 sets lr_mult 0 and decay_mult 0 on it, so Caffe
    freezes ``w`` (the owner's default 1 applied before, and ``w`` moved from 0.1 to 0.52 in three steps)."""
    s = get_solver(solver(tmp_path, first, second))
    assert mults(s)[0] == ("ip1", 0, *want)
    assert [m[:2] for m in mults(s)] == [("ip1", 0), ("ip1", 1), ("ip2", 1)]  # ip2's weight is ip1's
    s.step(3)
    w = s.net.layer("ip1").weight
    assert s.net.layer("ip2").weight is w
    if want == (0.0, 0.0):
        torch.testing.assert_close(w, torch.full((3, 3), 0.1), rtol=0, atol=0)
    else:
        assert not torch.equal(w, torch.full((3, 3), 0.1))


@pytest.mark.parametrize(("first", "second", "what"), [
    ('param { name: "w" lr_mult: 1 }', 'param { name: "w" lr_mult: 2 }', "lr_mult"),
    ('param { name: "w" decay_mult: 1 }', 'param { name: "w" decay_mult: 3 }', "decay_mult"),
])
def test_mismatched_shared_multipliers_are_refused(tmp_path: Path, first: str, second: str, what: str) -> None:
    with pytest.raises(SolverError, match=rf"net.prototxt:7:7: layer 'ip2': Shared param 'w' has mismatched {what}"):
        get_solver(solver(tmp_path, first, second))


TOO_MANY = r"net.prototxt:5:7: layer 'ip1': Too many params specified for layer ip1: 3 param \{\} blocks for 2 blobs"


def test_more_param_blocks_than_blobs_are_refused_in_training(tmp_path: Path) -> None:
    with pytest.raises(ShapeError, match=TOO_MANY):
        get_solver(solver(tmp_path, "param { } param { } param { }", ""))


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_more_param_blocks_than_blobs_are_refused_in_any_phase(tmp_path: Path, phase: str) -> None:
    """``Net::Init`` checks the count for every net it builds, deploy nets included (the layer's blob count:
    InnerProduct with ``bias_term: false`` has one)."""
    solver(tmp_path, "param { } param { }", "")
    net = tmp_path / "net.prototxt"
    prototxt2py.graph(net, phase=phase)  # two blocks for two blobs
    net.write_text(net.read_text().replace("num_output: 3 weight", "num_output: 3 bias_term: false weight", 1))
    with pytest.raises(ShapeError, match=TOO_MANY.replace("3 param", "2 param").replace("2 blobs", "1 blob")):
        prototxt2py.graph(net, phase=phase)


@pytest.mark.parametrize(("extra", "message"), [
    ('type: "RMSProp"\nrms_decay: 1\n', "rms_decay should lie between 0 and 1 (below 1), got 1"),
    ('type: ""\n', "unknown solver type ''"),
    ('regularization_type: "L3"\n', "unknown regularization_type 'L3'"),
])
def test_solver_fields_caffe_refuses(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(SolverError, match=r"solver.prototxt: " + message.replace("(", r"\(").replace(")", r"\)")):
        get_solver(solver(tmp_path, "", "", extra))


def test_an_unknown_regularization_type_without_weight_decay_trains(tmp_path: Path) -> None:
    """Caffe reads regularization_type only for a parameter with a non-zero decay."""
    path = solver(tmp_path, "", "", 'regularization_type: "L3"\n')
    Path(path).write_text(Path(path).read_text().replace("weight_decay: 0.1", "weight_decay: 0"))
    get_solver(path).step(1)


def test_debug_info_is_warned_about(tmp_path: Path) -> None:
    warned: list[str] = []
    get_solver(solver(tmp_path, "", "", "debug_info: true\n"), warn=warned.append)
    assert warned == [f"{tmp_path / 'solver.prototxt'}: debug_info is not supported: the per-layer "
                      "[Forward]/[Backward]/[Update] lines are not logged"]


def test_snapshot_diff_is_warned_about(tmp_path: Path) -> None:
    warned: list[str] = []
    get_solver(solver(tmp_path, "", "", "snapshot_diff: true\n"), warn=warned.append)
    assert warned == [f"{tmp_path / 'solver.prototxt'}: snapshot_diff is not supported: snapshots hold the weights "
                      "without their diffs"]


def test_an_empty_net_name_is_refused_naming_the_solver(tmp_path: Path) -> None:
    path = Path(solver(tmp_path, "", ""))
    path.write_text("\n".join('net: ""' if line.startswith("net:") else line
                              for line in path.read_text().splitlines()))
    with pytest.raises(SolverError, match=f"^{path}: the net file name is empty$"):
        get_solver(str(path))


def test_propagate_down_false_cuts_the_gradient_in_training(tmp_path: Path) -> None:
    """``propagate_down: false`` on ip2's bottom: Caffe's ``Net::Init`` marks ip1 as needing no backward, so ip1
    only decays (``w -= lr * decay * w`` per step: 0.1 * 0.99^3 after 3 steps) while ip2 learns."""
    s = get_solver(solver(tmp_path, "", "propagate_down: false"))
    s.step(3)
    ip1, ip2 = (s.net.layer_blobs(n)[0] for n in ("ip1", "ip2"))
    decayed = torch.full((3, 3), 0.1)
    for _ in range(3):
        decayed = decayed - 0.1 * (0.1 * decayed)
    torch.testing.assert_close(ip1, decayed, rtol=0, atol=0)
    assert (ip2 - decayed).abs().min() > 1e-3


def test_force_backward_gives_lr_mult_0_blobs_their_gradient_in_clipping(tmp_path: Path) -> None:
    """With ``force_backward`` Caffe's ``Net::Init`` sets ``param_propagate_down`` on every blob, so a frozen
    weight's gradient is computed and counts in ``clip_gradients``' global norm; the weight itself stays."""
    from prototxt2py import caffe

    (tmp_path / "net.prototxt").write_text('''force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 2 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" param { lr_mult: 0 } param { lr_mult: 1 }
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }''')
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 1 lr_policy: "fixed" '
                                              'max_iter: 1 clip_gradients: 0.1 display: 0\n')
    x, t = np.array([[1, 2, 3], [4, 5, 6]], np.float32), np.array([[0], [1]], np.float32)
    s = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    s.net.blobs["data"].data[...], s.net.blobs["target"].data[...] = x, t
    s.step(1)
    d = (x @ np.full((3, 1), 0.5, np.float32) - t) / 2  # EuclideanLoss' gradient
    g_w, g_b = d.T @ x, d.sum(0)
    want_b = -g_b * 0.1 / np.sqrt((g_w**2).sum() + (g_b**2).sum())  # the bias' update, scaled by both norms
    np.testing.assert_allclose(s.net.params["ip"][1].data, want_b, rtol=1e-5)
    np.testing.assert_array_equal(s.net.params["ip"][0].data, np.full((1, 3), 0.5, np.float32))


def test_force_backward_overrides_propagate_down(tmp_path: Path) -> None:
    """``Net::Init`` turns every bottom a layer allows (``AllowForceBackward``) back on under ``force_backward``,
    after ``propagate_down``: ip1 then learns exactly as without the field."""
    trained = []
    for field in ("propagate_down: false", ""):
        folder = tmp_path / str(len(trained))
        folder.mkdir()
        path = solver(folder, "", field)
        net = folder / "net.prototxt"
        net.write_text("force_backward: true\n" + net.read_text())
        s = get_solver(path)
        s.step(3)
        trained.append(s.net.layer_blobs("ip1")[0].clone())
    torch.testing.assert_close(trained[0], trained[1], rtol=0, atol=0)
    assert (trained[0] - 0.1).abs().max() > 1e-3  # and it did learn
