"""``scripts/gpu_checks.sh`` (the GPU checks of issue 21, in one run) as a dry run on the CPU, so that it cannot rot
while no GPU machine is at hand: its golden tests pass on the device it names, and its benchmark prints its
forward table for that device."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from golden import GOLDEN

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_checks_script_dry_run_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PROTOTXT2PY_TEST_DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path),
           "BENCH_ARGS": "--smoke --parts forward", "OMP_NUM_THREADS": "1", "PROTOTXT2PY_SHARED": str(GOLDEN.parent)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_checks.sh"), "-k", "lenet"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    golden = (tmp_path / "golden.txt").read_text()
    passed = re.search(r"(\d+) passed", golden)
    assert passed and int(passed.group(1)) >= 5 and "failed" not in golden, golden[-2000:]
    forward = (tmp_path / "forward.txt").read_text()
    assert re.search(r"forward, batch 1 \(1 rounds\)\n.*\n  prototxt2py +\d+\.\d", forward), forward[-2000:]
