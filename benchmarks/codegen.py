"""Code generation benchmark: the generated module against the runtime module and hand-written AlexNet.

Run from the checkout: ``python benchmarks/codegen.py`` (``--rounds N``; ``--smoke`` runs a tiny version in
seconds, for the test suite). In one run, with the contenders interleaved round by round:

* forward latency of AlexNet at batch 1 and 16 (eval, no grad) for the generated module (written by
  ``convert --to python`` and imported from the file), the runtime module (``prototxt2py.load``) and the
  hand-written ``nn.Sequential`` of benchmarks/runtime.py, eager and ``torch.compile``d; plus compile times;
* the time to generate the source of ResNet-152 (IR build included, and the emitter alone).

Goals (issue 16): generated within 5% of hand-written, eager and compiled; ResNet-152 generated in < 1 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from runtime import CORPUS, generate_weights, hand_written_alexnet, interleaved, load_average  # noqa: E402

import prototxt2py  # noqa: E402
from prototxt2py.backends.codegen import generate  # noqa: E402
from prototxt2py.convert import write_python  # noqa: E402

ALEXNET = CORPUS / "BVLC__caffe/models/bvlc_alexnet/deploy.prototxt"
RESNET152 = CORPUS / "KaimingHe__deep-residual-networks/prototxt/ResNet-152-deploy.prototxt"
SMOKE_NET = ROOT / "fixtures" / "alexnet" / "deploy.prototxt"


def import_generated(folder: Path, py: str, cls: str, pt: str) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location(Path(py).stem, py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    module = getattr(mod, cls)()
    module.load_state_dict(torch.load(pt, weights_only=True))
    return module.eval()


def compile_time(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.nn.Module, float]:
    torch._dynamo.reset()
    compiled = torch.compile(module)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(x)
    return compiled, time.perf_counter() - start


def forward_rows(net, generated, hand, batch: int, rounds: int, compiled: bool) -> dict[str, tuple[float, float]]:
    x = torch.from_numpy(np.random.default_rng(batch).uniform(-1, 1, (batch, 3, 227, 227)).astype(np.float32))
    contenders = {"generated module": generated, "runtime module": net, "hand-written PyTorch": hand}
    out_name = net.output_names[0]
    with torch.no_grad():
        ref = net(x)[out_name]
        for k, m in contenders.items():
            y = m(x)
            y = y[out_name] if isinstance(y, dict) else y
            assert torch.allclose(y, ref, rtol=1e-4, atol=1e-6), k
    extra = {}
    if compiled:
        for k in list(contenders):
            contenders[k], seconds = compile_time(contenders[k], x)
            extra[k] = seconds
    with torch.no_grad():
        rows = interleaved({k: (lambda m=m: m(x)) for k, m in contenders.items()}, rounds)
    if compiled:
        for k, seconds in extra.items():
            print(f"  compile time, {k:30s} {seconds:6.1f} s")
    return rows


def table(title: str, rows: dict[str, tuple[float, float]], ref: str) -> None:
    print(f"\n{title}")
    print(f"  {'':32s} {'best ms':>9s} {'median':>9s}   best / best of '{ref}'")
    for name, (best, median) in rows.items():
        print(f"  {name:32s} {best * 1e3:9.2f} {median * 1e3:9.2f}   {best / rows[ref][0]:.2f}x")


def generation_times(prototxt: Path, rounds: int) -> None:
    best_total, best_emit = float("inf"), float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        graph = prototxt2py.graph(prototxt)
        mid = time.perf_counter()
        code = generate(graph)
        end = time.perf_counter()
        best_total, best_emit = min(best_total, end - start), min(best_emit, end - mid)
    lines = code.source.count("\n")
    print(f"\ngenerate {prototxt.name}: {len(graph.nodes)} layers -> {lines} lines; read + IR + emit "
          f"{best_total * 1e3:.0f} ms (emitter alone {best_emit * 1e3:.0f} ms), best of {rounds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (batch 1, 2 rounds, no compile)")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    rounds = 2 if args.smoke else args.rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {load_average()}")
    prototxt = SMOKE_NET if args.smoke else ALEXNET
    with tempfile.TemporaryDirectory(prefix="prototxt2py-codegen-") as tmp:
        weights = Path(tmp) / "alexnet.caffemodel"
        generate_weights(prototxt, weights)
        net = prototxt2py.load(prototxt, weights=weights).eval()
        py, pt = write_python(net, Path(tmp) / "gen")
        generated = import_generated(Path(tmp), py, generate(net.graph).class_name, pt)
        hand = hand_written_alexnet(net)
        for batch in (1,) if args.smoke else (1, 16):
            for compiled in (False,) if args.smoke or args.no_compile else (False, True):
                rows = forward_rows(net, generated, hand, batch, rounds, compiled)
                table(f"AlexNet forward, batch {batch}, {'torch.compile' if compiled else 'eager'} ({rounds} rounds)",
                      rows, "hand-written PyTorch")
    generation_times(SMOKE_NET if args.smoke else RESNET152, rounds)
    print(f"\n({load_average()})")


if __name__ == "__main__":
    main()
