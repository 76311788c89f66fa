"""Every script in benchmarks/ runs in its ``--smoke`` mode (a tiny net, one round) and prints its result
lines, so that none can rot unnoticed. Timings are not asserted: they depend on the machine.

The scripts start together (each is a fresh process that imports torch and builds its nets), so the module
costs about as long as the slowest one, not the sum.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATIO = r"\d+\.\d\dx"
#: script -> regular expressions its output must match (its ratio lines, or its table rows where it has none)
EXPECTED = {
    "cli_process.py": [r"python -c pass +\d+\.\d{3} +\d+\.\d{3} +\d+\.\d{3} +\(floor\)",
                       rf"summary LeNet +\d+\.\d{{3}} .* {RATIO} the 0\.5 s goal",
                       rf"convert --to onnx LeNet +\d+\.\d{{3}} .* {RATIO} the 1\.0 s goal"],
    "codegen.py": [rf"generated module +\d+\.\d\d +\d+\.\d\d +{RATIO}",
                   rf"runtime module +\d+\.\d\d +\d+\.\d\d +{RATIO}",
                   r"generate deploy\.prototxt: \d+ layers -> \d+ lines; read \+ IR \+ emit \d+ ms"],
    "onnx_export.py": [r"CIFAR-10 quick .* export .* s", rf"batch  1: torch .* torch/onnxruntime +{RATIO}",
                       rf"batch 16: torch .* torch/onnxruntime +{RATIO}"],
    "draw.py": [r"lenet\.prototxt +9 +\d+\.\d\ds +\d+\.\d\ds +\d+\.\d\ds +\d+\.\d\ds"],
    "foundation.py": [rf"lenet\.prototxt +\d+ +9 +.*ms +{RATIO}"],
    "zoo_forward.py": [rf"lenet_deploy +\d+\.\d +\d+\.\d +{RATIO}", rf"1 nets: layer-by-layer / fused from {RATIO}"],
    "training.py": [rf"LeNet +64 +\d+ +\d+ +{RATIO} +\d+ +{RATIO}",
                    rf"CIFAR-10 quick +100 +\d+ +\d+ +{RATIO} +\d+ +{RATIO}"],
    "runtime.py": [r"=== CIFAR-10 quick: \d+\.\d MB caffemodel", rf"plain read of the file +\d+\.\d +\d+\.\d +{RATIO}",
                   rf"prototxt2py\.load +\d+\.\d MB +{RATIO} the file",
                   rf"prototxt2py, layer by layer \(all_blobs=True\) +\d+\.\d +\d+\.\d +{RATIO}",
                   r"forward, batch 16 \(1 rounds\)", rf"onnxruntime \(our ONNX export\) +\d+\.\d +\d+\.\d +{RATIO}",
                   r"compile time, prototxt2py, torch\.compile +\d+\.\d s; warnings while compiling: 0",
                   rf"compile time ratio \(prototxt2py / hand-written\): {RATIO}",
                   rf"prototxt2py, torch\.compile +\d+\.\d +\d+\.\d +{RATIO}"],
}


def test_every_benchmark_script_is_covered() -> None:
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")) == sorted(EXPECTED)


@pytest.fixture(scope="module")
def outputs() -> dict[str, subprocess.CompletedProcess]:
    # one thread each: the scripts share the machine's cores, and oversubscribed OpenMP pools crawl
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / name), "--smoke"], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in EXPECTED}
    done = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_smoke(script: str, outputs: dict[str, subprocess.CompletedProcess]) -> None:
    import re

    result = outputs[script]
    assert result.returncode == 0, result.stderr[-3000:]
    for pattern in EXPECTED[script]:
        assert re.search(pattern, result.stdout), f"{pattern!r} not in:\n{result.stdout}"
