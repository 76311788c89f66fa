"""Commands that compute nothing never import torch (issue 21: a process that imports torch pays 1-2 s before
doing anything). Each command runs in a fresh interpreter under tests/torch_probe.py, which records every
``import torch`` executed by prototxt2py code and who is to blame for it.

Layer-family modules (``prototxt2py/layers/<family>.py``) are being converted to torch-free specs one by one:
while a family is listed in :data:`UNCONVERTED`, torch imports caused by it make the command's test an expected
failure (with the families named); an import anywhere else always fails. Once a family lands, remove it here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from golden import CORPUS

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("torch_probe.py")
ALEXNET = str(ROOT / "fixtures" / "alexnet" / "deploy.prototxt")
LENET = "ethereon__caffe-tensorflow/examples/mnist/lenet.prototxt"
LENET_WEIGHTS = "ethereon__caffe-tensorflow/examples/mnist/lenet_iter_10000.caffemodel"
LENET_V1 = "everpeace__caffe/examples/mnist/lenet.prototxt"
TRAIN_VAL = "BVLC__caffe/models/bvlc_alexnet/train_val.prototxt"
DATA = "data=10,3,227,227"

#: Families whose modules still import torch (to be emptied as the conversions land).
UNCONVERTED = set()

#: Written into every output folder: the layers whose ONNX mappings once built a torch module to read their
#: values (BatchNorm's statistics, DummyData's tops, the forks' BN, PriorBox's boxes), each in the form that
#: reads blobs.
MIXED_NET = """
name: "mixed"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "dummy" type: "DummyData" top: "d" top: "k"
        dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 1 dim: 1 dim: 4 dim: 4 }
                           data_filler { type: "constant" value: 0.5 } data_filler { type: "bilinear" } } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "b" batch_norm_param { use_global_stats: true } }
layer { name: "bn_batch" type: "BatchNorm" bottom: "x" top: "bb" batch_norm_param { use_global_stats: false } }
layer { name: "segbn" type: "BN" bottom: "b" top: "s" bn_param { bn_mode: INFERENCE
        scale_filler { type: "constant" value: 2 } shift_filler { type: "constant" value: 3 } } }
layer { name: "pspbn" type: "BN" bottom: "bb" top: "p" bn_param { frozen: true eps: 1e-3 } }
layer { name: "sum" type: "Eltwise" bottom: "s" bottom: "p" bottom: "d" top: "y" }
layer { name: "k_out" type: "Power" bottom: "k" top: "kk" power_param { power: 2 scale: 3 shift: 1 } }
layer { name: "prior" type: "PriorBox" bottom: "y" bottom: "x" top: "boxes"
        prior_box_param { min_size: 2 max_size: 3 aspect_ratio: 2 flip: true clip: true } }
"""

#: command id -> CLI arguments ({out} is a fresh output folder, {corpus} the shared corpus).
COMMANDS = {
    "summary": ["summary", ALEXNET],
    "summary_json_deploy": ["summary", "--json", "--deploy", "{corpus}/" + TRAIN_VAL, "--input", DATA],
    "layers": ["layers", "--markdown"],
    "upgrade": ["upgrade", "{corpus}/" + LENET_V1, "{out}/lenet_v2.prototxt"],
    "draw": ["draw", ALEXNET, "{out}/alexnet.dot"],
    "draw_shapes": ["draw", "--shapes", ALEXNET, "{out}/alexnet.dot"],
    "deploy": ["deploy", "{corpus}/" + TRAIN_VAL, "--input", DATA, "-o", "{out}/deploy.prototxt"],
    "convert_onnx": ["convert", "{corpus}/" + LENET, "--weights", "{corpus}/" + LENET_WEIGHTS, "--to", "onnx",
                     "-o", "{out}/lenet.onnx"],
    "convert_onnx_fillers": ["convert", "{corpus}/" + LENET, "--to", "onnx", "-o", "{out}/lenet.onnx"],
    "convert_onnx_mixed": ["convert", "{out}/mixed.prototxt", "--to", "onnx", "-o", "{out}/mixed.onnx"],
    "convert_onnx_mixed_weights": ["convert", "{out}/mixed.prototxt", "--weights", "{out}/mixed.caffemodel", "--to",
                                   "onnx", "-o", "{out}/mixed.onnx"],
    "convert_caffemodel": ["convert", "{corpus}/" + LENET, "--weights", "{corpus}/" + LENET_WEIGHTS, "--to",
                           "caffemodel", "-o", "{out}/lenet.caffemodel"],
    "convert_caffemodel_fillers": ["convert", "{corpus}/" + LENET, "--to", "caffemodel", "-o",
                                   "{out}/lenet.caffemodel"],
    "convert_safetensors": ["convert", "{corpus}/" + LENET, "--weights", "{corpus}/" + LENET_WEIGHTS, "--to",
                            "safetensors", "-o", "{out}/lenet.safetensors"],
}


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, dict | None]]:
    """Every command at once, each in its own interpreter (they run in parallel: start-up dominates)."""
    if not CORPUS.is_dir():
        pytest.skip("shared corpus not available")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    running = {}
    for name, args in COMMANDS.items():
        out = tmp_path_factory.mktemp(name)
        (out / "mixed.prototxt").write_text(MIXED_NET)
        if name == "convert_onnx_mixed_weights":  # BN statistics from a file (written torch-free, from fillers)
            subprocess.run([sys.executable, "-m", "prototxt2py", "convert", "mixed.prototxt", "--to", "caffemodel",
                            "-o", "mixed.caffemodel"], cwd=out, env=env, check=True, capture_output=True)
        argv = [a.format(out=out, corpus=CORPUS) for a in args]
        running[name] = subprocess.Popen([sys.executable, str(PROBE), *argv], cwd=out, env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = {}
    for name, proc in running.items():
        _, stderr = proc.communicate(timeout=600)
        lines = [line for line in stderr.splitlines() if line.startswith("TORCH-PROBE ")]
        results[name] = (proc.returncode, stderr, json.loads(lines[-1].split(" ", 1)[1]) if lines else None)
    return results


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_does_not_import_torch(command: str, probes: dict) -> None:
    code, stderr, probe = probes[command]
    assert code == 0 and probe is not None, stderr
    offenders = [site["at"] for site in probe["sites"] if site["family"] not in UNCONVERTED]
    assert not offenders, f"torch imported outside the unconverted layer families: {offenders}"
    if probe["loaded"]:
        assert probe["sites"], "torch was loaded, but not by prototxt2py code"
        families = sorted({site["family"] for site in probe["sites"]})
        pytest.xfail(f"family {', '.join(families)} not converted yet (imports torch)")


def test_probe_blames_code_outside_the_families() -> None:
    """The probe itself: ``run`` needs the runtime, so torch is imported by backends/, never blamed on a family."""
    weights, net = CORPUS / LENET_WEIGHTS, CORPUS / LENET
    if not weights.exists():
        pytest.skip("corpus LeNet not available")
    proc = subprocess.run([sys.executable, str(PROBE), "run", str(net), "--inputs", "missing.npz", "-o", "x.npz"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    probe = json.loads(proc.stderr.splitlines()[-1].split(" ", 1)[1])
    assert probe["loaded"]
    assert any(site["family"] is None and site["at"].startswith("prototxt2py/") for site in probe["sites"])


NUMPY_FREE = {
    "summary": ["summary", ALEXNET],
    "layers": ["layers"],
    "draw": ["draw", ALEXNET, "{out}/alexnet.dot"],
}
NUMPY_PROBE = """
import contextlib, io, sys
sys.argv = ["prototxt2py", *sys.argv[1:]]
from prototxt2py.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
print(sorted(m for m in ("numpy", "torch") if m in sys.modules))
"""


@pytest.mark.parametrize("command", sorted(NUMPY_FREE))
def test_command_does_not_import_numpy(command: str, tmp_path: Path) -> None:
    """numpy costs 60-100 ms of start-up; specs and fillers import it on first use (``lazy_numpy``), so commands
    that touch no array never load it."""
    argv = [a.format(out=tmp_path) for a in NUMPY_FREE[command]]
    proc = subprocess.run([sys.executable, "-c", NUMPY_PROBE, *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_lazy_numpy_is_numpy() -> None:
    import numpy

    from prototxt2py.lazy_numpy import np

    assert np.float32 is numpy.float32 and np.finfo is numpy.finfo
    with pytest.raises(AttributeError, match="no_such_thing"):
        np.no_such_thing  # noqa: B018
