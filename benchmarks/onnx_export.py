"""Benchmark of the ONNX export: export time and onnxruntime latency against the PyTorch runtime.

Run from the repository root (needs the shared corpus next to the checkout, onnx and onnxruntime)::

    .venv/bin/python benchmarks/onnx_export.py [--repeat 5]
    .venv/bin/python benchmarks/onnx_export.py --smoke    # CIFAR-10 quick, one timed run: seconds (the tests)

Models: ResNet-50 deploy (~25.6M parameters, ~100 MB of float32 weights) and BVLC AlexNet deploy
(~61M parameters, ~240 MB), with the golden README's zoo-recipe weights (random, seeded; the values do not
matter for timing, but they keep activations in a realistic range). Export time is ``export_onnx`` to a file
(building the graph, ``check_model(full_check=True)``, writing). Latency is the median of ``--repeat`` timed
runs after one warm-up, for the PyTorch runtime (``CaffeNet``, eval mode, ``torch.inference_mode``) and for
onnxruntime's CPU provider on the exported model (exported once with a dynamic batch, so one model serves
batch 1 and 16); the ratio is torch time / onnxruntime time from the same run. Nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
sys.path.insert(0, str(ROOT / "tests"))  # the zoo weight recipe lives with the golden tests

from golden import recipe_weights  # noqa: E402

import prototxt2py  # noqa: E402
from prototxt2py.backends.onnx_export import export_onnx  # noqa: E402

MODELS = {
    "ResNet-50": CORPUS / "KaimingHe__deep-residual-networks/prototxt/ResNet-50-deploy.prototxt",
    "AlexNet": CORPUS / "BVLC__caffe/models/bvlc_alexnet/deploy.prototxt",
}
SMOKE_MODELS = {"CIFAR-10 quick": CORPUS / "BVLC__caffe/examples/cifar10/cifar10_quick.prototxt"}
BATCHES = (1, 16)


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (allocations, onnxruntime's first-run kernels)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, prototxt: Path, repeat: int, workdir: Path) -> list[str]:
    net = prototxt2py.load(prototxt)
    recipe_weights(net, 1)
    net.eval()
    megabytes = sum(p.numel() for p in net.state_dict().values()) * 4 / 1e6
    out = workdir / f"{name}.onnx"
    export_s = median_seconds(lambda: export_onnx(net, out), repeat)
    dynamic = workdir / f"{name}-dynamic.onnx"
    export_onnx(net, dynamic, dynamic_batch=True)
    session = ort.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    shape = net.graph.values[net.graph.inputs[0]].shape
    rows = [f"{name:<10} {megabytes:8.1f} MB  export {export_s:6.3f} s  (file {out.stat().st_size / 1e6:.1f} MB)"]
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, *shape[1:])).astype(np.float32)
        tx = torch.from_numpy(x)

        def run_torch(tx: torch.Tensor = tx) -> object:
            with torch.inference_mode():
                return net(tx)

        torch_s = median_seconds(run_torch, repeat)
        ort_s = median_seconds(lambda x=x: session.run(None, {input_name: x}), repeat)
        rows.append(f"{'':<10} batch {batch:>2}: torch {torch_s * 1e3:8.1f} ms  onnxruntime {ort_s * 1e3:8.1f} ms  "
                    f"torch/onnxruntime {torch_s / ort_s:5.2f}x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--smoke", action="store_true", help="a tiny net, one timed run (checks the script runs)")
    args = parser.parse_args()
    models, repeat = (SMOKE_MODELS, 1) if args.smoke else (MODELS, args.repeat)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models.items():
            for row in bench(name, path, repeat, Path(tmp)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
