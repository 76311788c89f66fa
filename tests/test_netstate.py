"""The NetState a net is built with, composed as each Caffe entry point composes it.

1. ``Net(file, phase, level, stages)`` (pycaffe's ``caffe.Net``, ``caffe test``/``time``, and here ``summary``,
   ``draw --level``, ``deploy``): the caller's phase and level replace the file's ``state {}`` (level 0 too),
   the caller's stages are added to the file's.
2. ``Solver::InitTrainNet``: ``{phase: TRAIN}``, merged with the net's ``state``, then with ``train_state``
   (protobuf ``MergeFrom``: a field set at its default value still wins).
3. ``Solver::InitTestNets``: the same from ``{phase: TEST}`` with ``test_state(i)``, where the solver has any.
4. ``caffe train`` sets ``train_state.level`` to ``--level`` (default 0) always; pycaffe's solvers do not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from prototxt2py import caffe
from prototxt2py.backends.draw import diagram_of
from prototxt2py.cli import main
from prototxt2py.deploy import derive_deploy
from prototxt2py.netstate import TEST, TRAIN, State, solver_state
from prototxt2py.proto import caffe_pb2
from prototxt2py.reader import read_net

LEVELS = """state { level: 2 stage: "file" }
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "hi" type: "ReLU" bottom: "data" top: "hi" include { min_level: 1 } }
layer { name: "lo" type: "TanH" bottom: "data" top: "lo" include { max_level: 0 } }
layer { name: "both" type: "Sigmoid" bottom: "data" top: "both" include { stage: "file" stage: "mine" } }
"""

# A train net whose own state says level 1, with a second loss that exists from level 1 up.
TRAIN_NET = """name: "levels"
state {{ level: 1 {phase} }}
layer {{ name: "d" type: "DummyData" top: "data" top: "label"
  dummy_data_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 dim: 1 }}
    data_filler {{ type: "constant" value: 1 }} data_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 1 weight_filler {{ type: "constant" value: 0.5 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "hi_loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "hi_loss"
  include {{ min_level: 1 }} }}
layer {{ name: "train_only" type: "Sigmoid" bottom: "ip" top: "train_only" include {{ phase: TRAIN }} }}
layer {{ name: "test_only" type: "Sigmoid" bottom: "ip" top: "test_only" include {{ phase: TEST }} }}
"""


def _solver(tmp_path: Path, extra: str = "", net_phase: str = "") -> Path:
    (tmp_path / "net.prototxt").write_text(TRAIN_NET.format(phase=net_phase))
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0\nlr_policy: "fixed"\nmax_iter: 1\n'
                      f'display: 1\nsnapshot_prefix: "{tmp_path / "snap"}"\n{extra}')
    return solver


def _names(net: caffe.Net) -> list[str]:
    return list(net._layer_names)


def test_merge_is_protobufs_merge_from() -> None:
    """A set field replaces (an explicit 0 or TEST too), an unset one keeps; stages are appended."""
    net = State(phase=TRAIN, level=2, stages=["a"])
    assert net.merge(State(level=0, stages=["b"])) == State(TRAIN, 0, ["a", "b"])
    assert net.merge(State(phase=TEST)) == State(TEST, 2, ["a"])
    assert net.merge(State()) == net
    assert State().resolved() == State(TEST, 0, [])
    message = caffe_pb2.NetState()
    message.stage.append("s")
    assert State.of(message) == State(None, None, ["s"])
    message.level = 0
    assert State.of(message) == State(None, 0, ["s"])


def test_pycaffe_net_level_replaces_the_files_and_stages_add(tmp_path: Path) -> None:
    """Rule 1: ``caffe.Net(file, TEST)`` is level 0 whatever the file's ``state { level: 2 }`` says; the file's
    stage stays and the caller's joins it."""
    path = tmp_path / "levels.prototxt"
    path.write_text(LEVELS)
    assert _names(caffe.Net(str(path), caffe.TEST)) == ["in", "lo"]
    assert _names(caffe.Net(str(path), caffe.TEST, level=2)) == ["in", "hi"]
    assert _names(caffe.Net(str(path), caffe.TEST, stages=["mine"])) == ["in", "lo", "both"]
    import prototxt2py

    assert [n.name for n in prototxt2py.graph(str(path)).nodes] == ["in", "lo"]
    assert [n.name for n in prototxt2py.graph(str(path), level=None).nodes] == ["in", "hi"]  # the file's own


def test_tools_without_a_caffe_counterpart_follow_caffe_net(tmp_path: Path) -> None:
    """``summary``/``deploy`` default to level 0 as ``caffe test`` does; ``draw`` filters by phase only unless
    --level or --stage is given, and then an explicit ``--level 0`` beats the file's level."""
    path = tmp_path / "levels.prototxt"
    path.write_text(LEVELS)
    result = CliRunner().invoke(main, ["summary", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"] == ["lo"]
    result = CliRunner().invoke(main, ["summary", str(path), "--json", "--level", "2"])
    assert json.loads(result.stdout)["outputs"] == ["hi"]
    assert [layer.name for layer in derive_deploy(read_net(str(path))).net.layer] == ["data", "lo"]

    def drawn(level: int | None) -> list[str]:
        diagram = diagram_of(str(path), phase="TEST", level=level)
        return [n.id.split("\\n")[0] for n in diagram.nodes.values() if n.kind == "layer"]

    assert drawn(0) == ["in", "lo"]
    assert drawn(2) == ["in", "hi"]
    assert drawn(None) == ["in"]  # draw_net.py's phase-only rule: an include without a phase reads TRAIN


def test_solver_state_composition() -> None:
    """Rules 2 and 3 on the messages themselves: default phase < the net's state < the solver's state."""
    net = caffe_pb2.NetParameter()
    net.state.level = 1
    net.state.phase = TEST
    assert solver_state(TRAIN, net, caffe_pb2.NetState()) == State(TEST, 1, [])
    override = caffe_pb2.NetState(level=0, phase=TRAIN, stage=["x"])
    assert solver_state(TRAIN, net, override) == State(TRAIN, 0, ["x"])
    assert solver_state(TEST, caffe_pb2.NetParameter(), None) == State(TEST, 0, [])


def test_pycaffe_train_net_merges_the_nets_level_and_train_states(tmp_path: Path) -> None:
    """Rule 2: without a train_state the net's own level 1 counts (both losses, as Caffe's pycaffe solver has
    them); ``train_state { level: 0 }`` is set, so it wins and the level-1 loss is gone."""
    solver = caffe.get_solver(str(_solver(tmp_path)))
    assert _names(solver.net) == ["d", "ip", "loss", "hi_loss", "train_only"]
    solver.step(1)
    assert float(solver.net.blobs["hi_loss"].data) == pytest.approx(1.5**2 / 2)
    solver = caffe.get_solver(str(_solver(tmp_path, "train_state { level: 0 }")))
    assert "hi_loss" not in _names(solver.net) and "hi_loss" not in solver.net.blobs
    solver.net.reshape()  # the composed state is rebuilt unchanged
    assert "hi_loss" not in _names(solver.net)


def test_the_nets_or_the_train_states_phase_sets_the_train_nets(tmp_path: Path) -> None:
    """Rule 2: ``{phase: TRAIN}`` is the lowest precedence: the net's ``state { phase: TEST }`` and the solver's
    ``train_state { phase: TEST }`` each make the TRAIN net a TEST-phase net (Caffe forced nothing)."""
    for solver in (_solver(tmp_path, net_phase="phase: TEST"), _solver(tmp_path, "train_state { phase: TEST }")):
        net = caffe.get_solver(str(solver)).net
        assert "test_only" in _names(net) and "train_only" not in _names(net)
    net = caffe.get_solver(str(_solver(tmp_path, "train_state { phase: TRAIN }", net_phase="phase: TEST"))).net
    assert "train_only" in _names(net)


def test_test_nets_merge_the_nets_state_and_test_state(tmp_path: Path) -> None:
    """Rule 3: a test net starts from TEST, takes the net's level 1, then test_state(i)'s fields where set."""
    tests = "test_iter: 1\ntest_iter: 1\ntest_interval: 100\n"
    solver = caffe.get_solver(str(_solver(tmp_path, tests)))
    assert [("hi_loss" in _names(n), "test_only" in _names(n)) for n in solver.test_nets] == [(True, True)] * 2
    solver = caffe.get_solver(str(_solver(tmp_path, tests + 'test_state { level: 0 }\ntest_state { stage: "s" }\n')))
    assert [("hi_loss" in _names(n), "test_only" in _names(n)) for n in solver.test_nets] == [(False, True),
                                                                                               (True, True)]


def test_caffe_train_cli_sets_the_train_states_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule 4: ``caffe train`` sets train_state.level from --level (0 by default), so the net's level 1 is
    overridden and the level-1 loss is no train net output; ``--level 1`` brings it back."""
    solver = _solver(tmp_path)
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for flags in ([], ["--level", "1"]):
        result = CliRunner().invoke(main, ["train", str(solver), "--quiet", *flags])
        assert result.exit_code == 0, result.output
        outputs[tuple(flags)] = {line.split(": ")[1].split(" =")[0]
                                 for line in result.stderr.splitlines() if "Train net output #" in line}
    assert outputs == {(): {"loss", "train_only"}, ("--level", "1"): {"hi_loss", "loss", "train_only"}}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"phase": 7}, "unknown phase 7"), ({"phase": 2.5}, "unknown phase 2.5"), ({"phase": True}, "unknown phase True"),
    ({"phase": 1.0}, "unknown phase 1.0"), ({"level": 2**40}, "level 1099511627776 is outside NetState's int32"),
    ({"level": "x"}, "level must be an integer, got 'x'"), ({"level": 1.5}, "level must be an integer, got 1.5"),
    ({"stages": 5}, "stages must be a list of strings, got 5"), ({"stages": "ab"}, "stages must be a list of strings"),
])
def test_api_state_arguments_are_checked(tmp_path: Path, kwargs: dict, message: str) -> None:
    """An integer phase other than TRAIN/TEST would filter out every phase-ruled layer without a word."""
    import prototxt2py
    from prototxt2py.errors import GraphError

    path = tmp_path / "levels.prototxt"
    path.write_text(LEVELS)
    with pytest.raises(GraphError, match=message):
        prototxt2py.graph(str(path), **kwargs)


@pytest.mark.parametrize("level", ["2147483648", "-2147483649"])
def test_cli_level_is_an_int32(tmp_path: Path, level: str) -> None:
    """NetState.level is an int32: a value beyond is a usage error (train wrote it into the solver: exit 3)."""
    solver = _solver(tmp_path)
    for args in (["train", str(solver)], ["summary", str(tmp_path / "net.prototxt")]):
        result = CliRunner().invoke(main, [*args, "--level", level])
        assert result.exit_code == 2 and "--level" in result.output, result.output
