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
