"""Forward time of every golden zoo net: the runtime's fused inference plan against its layer-by-layer path.

Run from the checkout (needs ``../shared/golden/zoo`` and the corpus)::

    .venv/bin/python benchmarks/zoo_forward.py [--rounds 7] [NAME ...]
    .venv/bin/python benchmarks/zoo_forward.py --smoke    # LeNet, one round: seconds (the tests run this)

Each net is built from its corpus prototxt with the golden README's weight recipe and run on the recipe input
(``inputs.npz`` where the case stores one), in eval mode under ``torch.no_grad()``: ``net(x)`` (fused chains,
oneDNN) against ``net(x, all_blobs=True)`` (every layer as Caffe runs it). Both are timed in the same process,
interleaved, best of ``--rounds`` after one warm-up call each; the ratio is layer-by-layer / fused. Nothing here
asserts timings: this is where a fusion that slows some family down shows up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from golden import case_params, zoo_net_and_inputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="zoo case names (default: all)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="LeNet only, one round (checks the script runs)")
    args = parser.parse_args()
    if args.smoke:
        args.names, args.rounds = ["lenet_deploy"], 1
    cases = [p.values[0] for p in case_params("zoo")]
    if not cases:
        raise SystemExit("no golden zoo cases found next to the checkout (../shared/golden/zoo)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'net':32s} {'fused ms':>9s} {'layers ms':>10s} {'ratio':>6s}  fused conv chains")
    ratios = []
    for case in cases:
        if args.names and case.name not in args.names:
            continue
        net, inputs = zoo_net_and_inputs(case)
        net.eval()
        feed = {k: torch.from_numpy(v) for k, v in inputs.items() if k in net.input_names}
        best = {True: float("inf"), False: float("inf")}
        with torch.no_grad():
            for all_blobs in best:
                net(**feed, all_blobs=all_blobs)  # warm-up: packs weights, sizes caches
            for _ in range(args.rounds):
                for all_blobs in best:
                    start = time.perf_counter()
                    net(**feed, all_blobs=all_blobs)
                    best[all_blobs] = min(best[all_blobs], time.perf_counter() - start)
        ratio = best[True] / best[False]
        ratios.append(ratio)
        chains = sum(1 for f in net._fusions if f.conv)
        print(f"{case.name:32s} {best[False] * 1e3:9.1f} {best[True] * 1e3:10.1f} {ratio:5.2f}x  {chains}", flush=True)
    if ratios:
        ratios.sort()
        print(f"\n{len(ratios)} nets: layer-by-layer / fused from {ratios[0]:.2f}x to {ratios[-1]:.2f}x, "
              f"median {ratios[len(ratios) // 2]:.2f}x")


if __name__ == "__main__":
    main()
