"""Packaging: the wheel declares a torch range (not a pin) and installs beside a torch that is already there.

No second CPU build of torch can be had on this machine (PyPI's Linux wheels are CUDA builds needing GBs of
nvidia-* libraries, and PyTorch's CPU index is unreachable), so the fresh venv gets the existing CPU torch's
*code* by symlinks with *metadata* saying it is another version: pip's resolver sees torch 2.5.0 (or 2.4.1)
installed, with every index and find-links turned off, so it can only keep that torch or fail. The smoke
test then runs the installed command on real torch code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NET = """name: "smoke"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "constant" value: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


def test_torch_is_a_range_and_extras_exist() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = [r for r in project["dependencies"] if r.startswith("torch")]
    assert torch_req == ["torch>=2.5"]
    extras = project["optional-dependencies"]
    assert {"onnx", "train", "test"} <= set(extras)
    assert {"lmdb", "h5py", "pillow"} <= {r.split(">")[0].split("<")[0] for r in extras["train"]}
    assert "torch==2.13.0" in (ROOT / "scripts/setup.sh").read_text()  # a fresh machine still gets the CPU build


def _clean_env() -> dict[str, str]:
    """pip with no configuration (no index, find-links or constraints from this machine), no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps`` of a copy of the source tree (building in place would leave build/ and
    *.egg-info in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "prototxt2py", src / "prototxt2py", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(src)], capture_output=True, text=True, env=_clean_env())
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("prototxt2py-*.whl")
    return whl


def _venv_with_torch(root: Path, version: str) -> Path:
    """A fresh venv whose site-packages links every package of this one, except prototxt2py itself, and
    holds torch's code under ``torch-<version>`` metadata."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(root)],
                   check=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        name = entry.name.lower()
        if name.endswith(".pth") or name.startswith(("prototxt2py", "__editable__", "torch-", "__pycache__")):
            continue
        (site / entry.name).symlink_to(entry)
    meta = site / f"torch-{version}.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    (meta / "INSTALLER").write_text("test\n")
    (meta / "RECORD").write_text("")
    return python


def _pip_install(python: Path, whl: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q",
                           str(whl)], capture_output=True, text=True, env=_clean_env())


def test_wheel_installs_beside_another_torch_and_runs(wheel: Path, tmp_path: Path) -> None:
    python = _venv_with_torch(tmp_path / "venv", "2.5.0")
    r = _pip_install(python, wheel)
    assert r.returncode == 0, r.stderr
    listed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "list", "--format", "freeze"],
                            capture_output=True, text=True, env=_clean_env(), check=True).stdout.split()
    assert "torch==2.5.0" in listed and "prototxt2py==0.1.0" in listed  # torch kept, not replaced
    (tmp_path / "net.prototxt").write_text(NET)
    code = ("import numpy as np; np.savez('in.npz', data=np.ones((1, 2, 5, 5), np.float32))\n"
            "import prototxt2py, sys; assert prototxt2py.__file__.startswith(sys.prefix), prototxt2py.__file__\n")
    subprocess.run([python, "-c", code], cwd=tmp_path, env=_clean_env(), check=True)
    cli = tmp_path / "venv" / "bin" / "prototxt2py"
    r = subprocess.run([cli, "run", "net.prototxt", "--inputs", "in.npz", "-o", "out.npz"], cwd=tmp_path,
                       capture_output=True, text=True, env=_clean_env())
    assert r.returncode == 0, r.stderr
    check = "import numpy as np; o = np.load('out.npz')['conv']; assert o.shape == (1, 3, 3, 3) and (o == 18).all()"
    subprocess.run([python, "-c", check], cwd=tmp_path, env=_clean_env(), check=True)


def test_torch_below_the_floor_is_refused(wheel: Path, tmp_path: Path) -> None:
    python = _venv_with_torch(tmp_path / "venv", "2.4.1")
    r = _pip_install(python, wheel)
    assert r.returncode != 0
    assert "torch>=2.5" in r.stderr
