"""Benchmark of the command line as a user meets it: whole processes, start-up and imports included.

Run from the repository root (needs the shared corpus next to the checkout)::

    .venv/bin/python benchmarks/cli_process.py              # 5 rounds (about half a minute)
    .venv/bin/python benchmarks/cli_process.py --rounds 9
    .venv/bin/python benchmarks/cli_process.py --smoke      # LeNet, one round (the tests)

Goals of issue 21 ("Fast CLI"): ``prototxt2py summary`` of ResNet-152 in under 0.5 s and ``prototxt2py convert
--to onnx`` of ResNet-50 with its weights in under 1 s, each as a process. The weights are written first, by
the torch-free ``convert --to caffemodel`` (the deploy prototxt declares no fillers, so they are zeros: the
export's cost depends on their size, 102 MB, not their values). ``python -c pass`` is the interpreter's own
floor.

Each command runs once untimed first, with bytecode caching into a temporary ``PYTHONPYCACHEPREFIX`` (an
installed package has its ``.pyc`` files; a checkout run with ``PYTHONDONTWRITEBYTECODE`` would otherwise pay
for compiling every module on every start). Rounds interleave the commands; the table gives the best round (the
least disturbed by other processes, which the ratios use), the median, and the CPU time (user + system) of the
best round's process. The load average is printed before and after: on a shared machine, compare only runs
with a low one. Nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
RESNET50 = CORPUS / "KaimingHe__deep-residual-networks/prototxt/ResNet-50-deploy.prototxt"
RESNET152 = CORPUS / "KaimingHe__deep-residual-networks/prototxt/ResNet-152-deploy.prototxt"
LENET = CORPUS / "ethereon__caffe-tensorflow/examples/mnist/lenet.prototxt"
LENET_WEIGHTS = CORPUS / "ethereon__caffe-tensorflow/examples/mnist/lenet_iter_10000.caffemodel"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system) of one process; a failure stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="LeNet only, one round")
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    print(load_average())
    with tempfile.TemporaryDirectory(prefix="cli_process.") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
                   PYTHONPYCACHEPREFIX=str(work / "pycache"))
        cli = [sys.executable, "-m", "prototxt2py"]
        if args.smoke:
            summary_net, export_net, weights = LENET, LENET, LENET_WEIGHTS
            names = ("summary LeNet", "convert --to onnx LeNet")
        else:
            summary_net, export_net, weights = RESNET152, RESNET50, work / "resnet50.caffemodel"
            names = ("summary ResNet-152", "convert --to onnx ResNet-50")
            subprocess.run([*cli, "convert", str(RESNET50), "--to", "caffemodel", "-o", str(weights)], env=env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"ResNet-50 weights: {weights.stat().st_size / 1e6:.1f} MB")
        commands = {
            "python -c pass": ([sys.executable, "-c", "pass"], None),
            names[0]: ([*cli, "summary", str(summary_net)], 0.5),
            names[1]: ([*cli, "convert", str(export_net), "--weights", str(weights), "--to", "onnx", "-o",
                        str(work / "out.onnx")], 1.0),
        }
        for argv, _ in commands.values():  # warm-up: bytecode cache, page cache
            timed(argv, env, work)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, (argv, _) in commands.items():
                results[name].append(timed(argv, env, work))
        print(f"\n{'command':<30} {'best s':>8} {'median s':>9} {'cpu s':>7}   goal")
        for name, (_, goal) in commands.items():
            best = min(results[name])
            median = statistics.median(w for w, _ in results[name])
            verdict = f"{best[0] / goal:.2f}x the {goal} s goal" if goal else "(floor)"
            print(f"{name:<30} {best[0]:8.3f} {median:9.3f} {best[1]:7.3f}   {verdict}")
    print(f"\n{rounds} rounds; {load_average()}")


if __name__ == "__main__":
    main()
