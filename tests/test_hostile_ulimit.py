"""The CLI under ``ulimit -v 4194304`` (4 GiB of address space) on every regression input: each command ends
within its time with exit 0 or 1 (one ``error:`` line), never 3 (a bug), a traceback or a kill."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
INPUTS = sorted(p for p in (ROOT / "fuzz" / "regressions").glob("*/*") if p.is_file())
LIMIT = 4 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from prototxt2py.cli import main; sys.argv[0] = 'prototxt2py'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, preexec_fn=_limit_memory, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
@pytest.mark.parametrize("path", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_cli_under_ulimit(path: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", data=np.zeros((1, 3, 8, 8), np.float32))
    commands = [["summary", str(path)], ["upgrade", str(path), "up.prototxt"], ["draw", str(path), "d.svg"],
                ["convert", str(path), "--to", "onnx", "-o", "m.onnx"],
                ["run", str(path), "--inputs", "in.npz", "-o", "o.npz"],
                ["convert", str(ROOT / "fuzz/regressions/onnx/empty-top.prototxt").replace("empty-top", "tile-to-1e12"),
                 "--weights", str(path), "--to", "pytorch", "-o", "w.pt"]]
    for args in commands:
        r = _cli(args, tmp_path)
        assert r.returncode in (0, 1), (args, r.returncode, r.stderr[-2000:])
        if r.returncode == 1:
            errors = [line for line in r.stderr.splitlines() if not line.startswith("warning: ")]
            assert len(errors) == 1 and errors[0].startswith("error: "), (args, r.stderr[-2000:])


# ---------------------------------------------------------------------------------------------------------
# Every command under a sweep of address-space limits
# ---------------------------------------------------------------------------------------------------------
LENET = "ethereon__caffe-tensorflow/examples/mnist/lenet.prototxt"
LENET_WEIGHTS = "ethereon__caffe-tensorflow/examples/mnist/lenet_iter_10000.caffemodel"
LENET_V1 = "everpeace__caffe/examples/mnist/lenet.prototxt"
#: Limits of the sweep (MiB): below what the interpreter and numpy need, below torch's libraries, enough for
#: some commands only, and enough for all of them. The default suite runs the second one.
SWEEP_MIB = (96, 512, 1024, 2048)
#: The only line allowed that is not ``error: ...``: numpy's OpenBLAS exits by itself (status 1, one line)
#: when it cannot allocate its buffers at import, before any Python code of ours could run.
OPENBLAS = "OpenBLAS error: Memory allocation still failed"


def _commands(corpus: Path, golden: Path) -> dict[str, list[str]]:
    """Every CLI command on a small valid input (run in the folder made by :func:`_case`)."""
    net, weights = str(corpus / LENET), str(corpus / LENET_WEIGHTS)
    datasets = golden / "data" / "datasets"
    convert = {f"convert_{fmt}": ["convert", net, "--weights", weights, "--to", fmt, "-o", out]
               for fmt, out in (("pytorch", "w.pt"), ("safetensors", "w.safetensors"), ("caffemodel", "w.caffemodel"),
                                ("onnx", "m.onnx"), ("python", "py"))}
    return {
        "summary": ["summary", net], "upgrade": ["upgrade", str(corpus / LENET_V1), "up.prototxt"],
        "layers": ["layers"], "draw": ["draw", net, "d.dot"],
        "deploy": ["deploy", "train_val.prototxt", "--input", "data=4,8", "-o", "deploy.prototxt"],
        **convert,
        "run": ["run", net, "--weights", weights, "--inputs", "in.npz", "-o", "o.npz"],
        "train": ["train", "solver.prototxt", "--quiet", "--iterations", "2"],
        "test": ["test", "train_val.prototxt", "--iterations", "2"],
        "time": ["time", "train_val.prototxt", "--iterations", "2"],
        "convert-imageset": ["convert-imageset", f"{datasets}/images/", str(datasets / "color_list.txt"), "db"],
        "compute-image-mean": ["compute-image-mean", str(datasets / "color_raw_lmdb"), "mean.binaryproto"],
    }


def _case(folder: Path) -> Path:
    from train_util import make_case

    make_case(folder, max_iter=2, test_interval=100)
    np.savez(folder / "in.npz", data=np.zeros((64, 1, 28, 28), np.float32))
    return folder


def _sweep(limit_mib: int, tmp_path: Path) -> dict[str, tuple[list[str], subprocess.Popen]]:
    """Every command at once (each in its own folder and process, under ``ulimit -v limit_mib``)."""
    from golden import CORPUS, GOLDEN

    if not (CORPUS / LENET_WEIGHTS).exists() or not (GOLDEN / "data" / "datasets").is_dir():
        pytest.skip("shared corpus or golden datasets not available")
    code = "import sys; from prototxt2py.cli import main; sys.argv[0] = 'prototxt2py'; main()"
    limit = limit_mib << 20

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    running = {}
    for name, args in _commands(CORPUS, GOLDEN).items():
        folder = _case(tmp_path / name)
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=folder, preexec_fn=preexec, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
        running[name] = (args, proc)
    return running


def _check_one_line_or_success(name: str, args: list[str], proc: subprocess.Popen) -> int:
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
    what = f"{name} ({' '.join(args)}) exit {proc.returncode}:\n{stderr[-3000:]}"
    assert proc.returncode in (0, 1), what  # never 3 (a bug), never killed by a signal (negative)
    assert "Traceback" not in stderr, what
    if proc.returncode == 1:
        lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
        assert len(lines) == 1 and (lines[0].startswith("error: ") or lines[0].startswith(OPENBLAS)), what
    return proc.returncode


def _run_sweep(limit_mib: int, tmp_path: Path) -> dict[str, int]:
    running = _sweep(limit_mib, tmp_path)
    return {name: _check_one_line_or_success(name, args, proc) for name, (args, proc) in running.items()}


def test_every_command_under_a_low_address_space_limit(tmp_path: Path) -> None:
    """512 MiB: below what torch's libraries alone map. Commands that compute nothing succeed; the others say
    so in one line (before, loading torch aborted with std::bad_alloc, exit 134, or was an internal error)."""
    codes = _run_sweep(512, tmp_path)
    torch_free = {"summary", "upgrade", "layers", "draw", "deploy", "convert_safetensors", "convert_caffemodel",
                  "convert_onnx"}
    assert {name for name, code in codes.items() if code == 0} >= torch_free, codes
    assert codes["run"] == codes["train"] == codes["convert_pytorch"] == 1, codes


@pytest.mark.slow
@pytest.mark.parametrize("limit_mib", [m for m in SWEEP_MIB if m != 512])
def test_every_command_under_an_address_space_sweep(limit_mib: int, tmp_path: Path) -> None:
    codes = _run_sweep(limit_mib, tmp_path)
    if limit_mib >= 2048:  # enough for everything: the sweep's inputs are valid
        assert set(codes.values()) == {0}, codes


def test_torch_guard_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from prototxt2py import memguard
    from prototxt2py.errors import ResourceLimitError

    monkeypatch.setattr(memguard, "_address_space_limit", lambda: None)
    memguard.check_torch_fits()  # no limit: nothing to check
    monkeypatch.setattr(memguard, "_address_space_limit", lambda: 300 << 20)
    with pytest.raises(ResourceLimitError) as e:
        memguard.check_torch_fits()
    need = memguard._mapped_bytes() + memguard._torch_library_bytes() + memguard.MARGIN_BYTES
    assert memguard._torch_library_bytes() > 100 << 20  # torch's CPU libraries: hundreds of MB
    assert "limit (ulimit -v) is 300 MiB" in str(e.value) and f"at least {-(-need >> 20)} MiB" in str(e.value)
    monkeypatch.setattr(memguard, "_address_space_limit", lambda: need + (1 << 20))
    memguard.check_torch_fits()
