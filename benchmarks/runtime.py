"""Runtime benchmark: caffemodel -> ready ``nn.Module`` (time and peak memory) and forward latency.

Run from the checkout: ``python benchmarks/runtime.py`` (``--quick`` for fewer rounds, ``--rounds N``;
``--smoke``: CIFAR-10 quick, one round, seconds, which the tests run so that the script cannot rot).
Every ratio is measured in the same run, with the contenders interleaved round by round (on a shared machine
the load drifts; interleaving keeps the comparison fair) and the median of the rounds reported.

Contenders: a plain read of the caffemodel's bytes (the floor for loading), OpenCV's ``cv2.dnn`` (an
independent C++ implementation reading the same files), onnxruntime running our own ONNX export of the same
net and weights (same thread count), and, for AlexNet, a hand-written PyTorch model of the same architecture
(``nn.Sequential`` with ``nn.LocalResponseNorm`` and ``ceil_mode`` max pooling). ``--parts compile`` compares
``torch.compile`` of the runtime module with ``torch.compile`` of a hand-written model of the same architecture
and weights (AlexNet: that ``nn.Sequential``; ResNet-50: a Caffe-style hand-written ResNet-50), latency, compile
time and the warnings logged while compiling.
The models are the corpus deploy prototxts with generated weights, written once per run by our writer into a
temporary directory: AlexNet (61M parameters, 244 MB) and ResNet-50 (BatchNorm + Scale, 102 MB).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prototxt2py  # noqa: E402
from prototxt2py.backends.torch_runtime import CaffeNet  # noqa: E402
from prototxt2py.convert import convert_net  # noqa: E402
from prototxt2py.weights import load_weights, write_caffemodel  # noqa: E402

try:
    import cv2
except ImportError:  # the OpenCV columns are then left out
    cv2 = None
try:
    import onnxruntime as ort
except ImportError:  # the onnxruntime rows are then left out
    ort = None

#: ``../shared`` beside the checkout, or where ``PROTOTXT2PY_SHARED`` says (scripts/gpu_checks.sh)
CORPUS = Path(os.environ.get("PROTOTXT2PY_SHARED") or ROOT.parent / "shared") / "corpus"
PARTS = ["load", "memory", "forward", "compile"]
DEFAULT_PARTS = ["load", "memory", "forward"]  # compile: minutes per model, only when asked
MODELS = {
    "AlexNet": (CORPUS / "BVLC__caffe/models/bvlc_alexnet/deploy.prototxt", (3, 227, 227)),
    "ResNet-50": (CORPUS / "KaimingHe__deep-residual-networks/prototxt/ResNet-50-deploy.prototxt", (3, 224, 224)),
}
SMOKE_MODELS = {"CIFAR-10 quick": (CORPUS / "BVLC__caffe/examples/cifar10/cifar10_quick.prototxt", (3, 32, 32))}


# -- weights -------------------------------------------------------------------------------------------------
def generate_weights(prototxt: Path, out: Path, seed: int = 0) -> None:
    """Plausible random weights (fan-in scaled, BatchNorm statistics with scale factor 1) written by our writer,
    so activations stay finite through deep nets and the forward timings are representative."""
    net = prototxt2py.load(prototxt)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for node in net.graph.nodes:
            for i, blob in enumerate(net.layer_blobs(node.name)):
                if node.type == "BatchNorm":
                    blob.copy_((torch.randn(blob.shape, generator=gen) * 0.1, torch.rand(blob.shape, generator=gen)
                                + 0.5, torch.ones(blob.shape))[i])
                elif blob.dim() >= 2:
                    blob.normal_(0.0, math.sqrt(1.0 / (blob.numel() // blob.shape[0])), generator=gen)
                elif node.type == "Scale" and i == 0:
                    blob.uniform_(0.5, 1.5, generator=gen)
                else:
                    blob.uniform_(-0.1, 0.1, generator=gen)
    with open(out, "wb") as f:
        write_caffemodel(net, f)


# -- timing --------------------------------------------------------------------------------------------------
Timings = dict[str, tuple[float, float]]  # contender -> (best, median) seconds


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1, repeat: int = 1
                ) -> Timings:
    """(best, median) seconds per contender; each round runs every contender ``repeat`` times in a row, in
    turn, and times the last run. The best round is the one least disturbed by other processes, the figure the
    ratios use; the median shows the spread. The forward part uses ``repeat=2``, the steady state of a model served
    in a loop: a single pass right after another contender would pay for that contender's churn of the
    process's allocator (page faults for memory it handed back to the OS), which onnxruntime, with its own
    arena, never does and a PyTorch model does."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            gc.collect()
            for _ in range(repeat):
                start = time.perf_counter()
                result = fn()
                elapsed = time.perf_counter() - start
                del result
            times[name].append(elapsed)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def load_times(prototxt: Path, weights: Path, rounds: int) -> Timings:
    graph = prototxt2py.graph(prototxt)
    contenders: dict[str, Callable[[], object]] = {
        "plain read of the file": weights.read_bytes,
        "prototxt2py.load (prototxt + weights)": lambda: prototxt2py.load(prototxt, weights=weights),
        "  of which: modules + weights": lambda: CaffeNet.from_weights(graph, weights),
        "  the same, blobs filled before loading (no deferral)": lambda: load_weights(CaffeNet(graph), weights),
    }
    if cv2 is not None:
        contenders["cv2.dnn.readNetFromCaffe"] = lambda: cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    return interleaved(contenders, rounds)


_PEAK_SCRIPT = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import torch, prototxt2py
how, prototxt, weights = sys.argv[2:5]
if how == "opencv":
    import cv2

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

graph = prototxt2py.graph(prototxt)
try:  # reset the high-water mark to the current RSS (Linux >= 4.0), so the peak is the loading's own
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = status("VmRSS:")
start = time.perf_counter()
if how == "ours":
    obj = prototxt2py.load(graph, weights=weights)
elif how == "opencv":
    obj = cv2.dnn.readNetFromCaffe(prototxt, weights)
else:
    obj = open(weights, "rb").read()
seconds = time.perf_counter() - start
print(json.dumps({"peak": status("VmHWM:") - base, "after": status("VmRSS:") - base, "seconds": seconds}))
"""


def peak_memory(how: str, prototxt: Path, weights: Path) -> dict[str, float]:
    """Peak RSS above the baseline while loading, in a fresh process (a high-water mark is per process), and
    the time of that first load (no memory recycled from earlier loads; the prototxt is already parsed)."""
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(ROOT), how, str(prototxt), str(weights)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- forward -------------------------------------------------------------------------------------------------
def hand_written_alexnet(net: CaffeNet) -> nn.Sequential:
    """AlexNet as one would write it in PyTorch, with the Caffe net's weights copied in."""
    lrn = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)
    model = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True), nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True), nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 1000), nn.Softmax(dim=1),
    )
    weighted = [m for m in model if isinstance(m, nn.Conv2d | nn.Linear)]
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    with torch.no_grad():
        for module, name in zip(weighted, names, strict=True):
            module.weight.copy_(net.layer(name).weight)
            module.bias.copy_(net.layer(name).bias)
    return model.eval()


def _caffe_bn(net: CaffeNet, bn: str, scale: str) -> nn.BatchNorm2d:
    """Caffe's BatchNorm + Scale pair as the one ``nn.BatchNorm2d`` a PyTorch user writes (the mapping a
    Caffe -> torchvision weight converter does): stored statistics divided by the scale factor, Scale's
    blobs as the affine weight and bias, the same eps."""
    caffe_bn, caffe_scale = net.layer(bn), net.layer(scale)
    mean, var = caffe_bn.stored_stats()
    module = nn.BatchNorm2d(mean.numel(), eps=caffe_bn.eps)
    with torch.no_grad():
        module.running_mean.copy_(mean)
        module.running_var.copy_(var)
        module.weight.copy_(caffe_scale.weight)
        module.bias.copy_(caffe_scale.bias)
    return module


def _caffe_conv(net: CaffeNet, name: str, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    caffe = net.layer(name)
    out_c, in_c, k, _ = caffe.weight.shape
    module = nn.Conv2d(in_c, out_c, k, stride=stride, padding=padding, bias=caffe.bias is not None)
    with torch.no_grad():
        module.weight.copy_(caffe.weight)
        if caffe.bias is not None:
            module.bias.copy_(caffe.bias)
    return module


class CaffeBottleneck(nn.Module):
    """One ResNet-50 block as in Kaiming He's Caffe model: the stride on the first 1x1 convolution (torchvision's
    "v1.5" puts it on the 3x3), BatchNorm + Scale as ``nn.BatchNorm2d``, a projection shortcut on the first
    block of a stage."""

    def __init__(self, net: CaffeNet, block: str, stride: int, project: bool) -> None:
        super().__init__()
        def conv_bn(branch: str, stride: int = 1, padding: int = 0) -> nn.Sequential:
            return nn.Sequential(_caffe_conv(net, f"res{block}_{branch}", stride, padding),
                                 _caffe_bn(net, f"bn{block}_{branch}", f"scale{block}_{branch}"))

        self.branch2 = nn.Sequential(conv_bn("branch2a", stride), nn.ReLU(inplace=True),
                                     conv_bn("branch2b", padding=1), nn.ReLU(inplace=True), conv_bn("branch2c"))
        self.branch1 = conv_bn("branch1", stride) if project else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch2(x) + self.branch1(x))


def hand_written_resnet50(net: CaffeNet) -> nn.Sequential:
    """ResNet-50 as one would write it in PyTorch for Kaiming He's Caffe model (torchvision's block structure,
    Caffe's strides and ``ceil_mode`` max pooling), with the Caffe net's weights."""
    layers: list[nn.Module] = [_caffe_conv(net, "conv1", 2, 3), _caffe_bn(net, "bn_conv1", "scale_conv1"),
                               nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True)]
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3), strict=True):
        for i in range(blocks):
            layers.append(CaffeBottleneck(net, f"{stage}{'abcdef'[i]}", 2 if i == 0 and stage > 2 else 1, i == 0))
    fc = net.layer("fc1000")
    linear = nn.Linear(fc.weight.shape[1], fc.weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(fc.weight)
        linear.bias.copy_(fc.bias)
    layers += [nn.AvgPool2d(7, 1), nn.Flatten(), linear, nn.Softmax(dim=1)]
    return nn.Sequential(*layers).eval()


def hand_written_cifar10_quick(net: CaffeNet) -> nn.Sequential:
    """CIFAR-10 quick (the smoke model) written by hand, with the Caffe net's weights."""
    def conv(name: str) -> nn.Conv2d:
        return _caffe_conv(net, name, padding=2)

    def linear(name: str) -> nn.Linear:
        caffe = net.layer(name)
        module = nn.Linear(caffe.weight.shape[1], caffe.weight.shape[0])
        with torch.no_grad():
            module.weight.copy_(caffe.weight)
            module.bias.copy_(caffe.bias)
        return module

    return nn.Sequential(
        conv("conv1"), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(inplace=True),
        conv("conv2"), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, ceil_mode=True),
        conv("conv3"), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), linear("ip1"), linear("ip2"), nn.Softmax(dim=1),
    ).eval()


HAND_WRITTEN = {"AlexNet": hand_written_alexnet, "ResNet-50": hand_written_resnet50,
                "CIFAR-10 quick": hand_written_cifar10_quick}


def onnxruntime_session(net: CaffeNet, folder: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """onnxruntime on our own ONNX export (``convert --to onnx``) of ``net``, set up like the runtime: as many
    intra-op threads as torch uses, no inter-op parallelism, sequential execution, every graph optimization."""
    fd, name = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(fd)
    path = Path(name)
    convert_net(net, "onnx", path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(None, {input_name: x})[0]


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` timed to the end of its GPU work: kernels run asynchronously, a timer around the launch alone would
    measure the Python side only."""
    if device.type != "cuda":
        return fn

    def run() -> object:
        result = fn()
        torch.cuda.synchronize(device)
        return result

    return run


def forward_times(name: str, prototxt: Path, weights: Path, batch: int, rounds: int, folder: Path,
                  device: torch.device) -> Timings:
    """Forward latency of the runtime and its contenders. On a GPU (``device``) the contenders are the
    hand-written model, and for ResNet-50 the runtime layer by layer; OpenCV and onnxruntime are CPU-only here."""
    chw = MODELS[name][1]
    net = prototxt2py.load(prototxt, weights=weights, input_shapes={"data": [batch, *chw]}).eval()
    x = torch.from_numpy(np.random.default_rng(batch).uniform(-1, 1, (batch, *chw)).astype(np.float32))
    hand = HAND_WRITTEN[name](net).to(device) if name == "AlexNet" or device.type != "cpu" else None
    cpu_array = x.numpy()
    net, x = net.to(device), x.to(device)
    out_name = net.output_names[0]
    contenders: dict[str, Callable[[], object]] = {"prototxt2py": lambda: net(x)}
    if device.type == "cpu":  # oneDNN packs weights per input shape: a module that ran another batch size first
        other = 2 if batch == 1 else 1
        switched = prototxt2py.load(prototxt, weights=weights, input_shapes={"data": [batch, *chw]}).eval()
        with torch.no_grad():
            switched(torch.zeros(other, *chw))
        contenders[f"prototxt2py, after a pass at batch {other}"] = lambda: switched(x)
    if device.type == "cuda":  # every kernel launched by one replay (CaffeNet.cuda_graph), outputs copied out
        graphed = net.cuda_graph(x)
        contenders["prototxt2py, CUDA graph"] = lambda: graphed(x)
    if hand is not None:
        contenders["hand-written PyTorch"] = lambda: hand(x)
    if name != "AlexNet":
        contenders["prototxt2py, layer by layer (all_blobs=True)"] = lambda: net(x, all_blobs=True)
    if cv2 is not None and device.type == "cpu":
        cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))

        def opencv() -> np.ndarray:
            cv_net.setInput(cpu_array)
            return cv_net.forward()

        contenders["OpenCV dnn"] = opencv
    if ort is not None and device.type == "cpu":
        session = onnxruntime_session(net, folder)
        contenders["onnxruntime (our ONNX export)"] = lambda: session(cpu_array)

    def output(result: object) -> np.ndarray:
        result = result[out_name] if isinstance(result, dict) else result
        return result.cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)

    with torch.no_grad():
        ref = output(net(x, all_blobs=True))
        for k, fn in contenders.items():  # the contenders must compute the same thing
            err = float(np.abs(output(fn()).reshape(ref.shape) - ref).max())
            if err > 1e-4 * max(1.0, float(np.abs(ref).max())):
                raise SystemExit(f"{name}: {k} differs from prototxt2py by {err:g}")
        return interleaved({k: synced(fn, device) for k, fn in contenders.items()}, rounds, repeat=2)


# -- torch.compile -------------------------------------------------------------------------------------------
class _Counter(logging.Handler):
    """Counts the log records of level WARNING and above (each record once, whichever logger it reaches)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.setdefault(id(record), f"{record.name}: {record.getMessage()}"[:160])


@contextmanager
def counted_warnings() -> Iterator[list[str]]:
    """The warnings logged (root and ``torch`` loggers, which does not propagate when torch configured its
    logging) or raised through ``warnings`` inside the block: filled in when the block ends."""
    found: list[str] = []
    counter = _Counter()
    loggers = [logging.getLogger(), logging.getLogger("torch")]
    for logger in loggers:
        logger.addHandler(counter)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        for logger in loggers:
            logger.removeHandler(counter)
    found += list(counter.seen.values()) + [f"{w.category.__name__}: {w.message}"[:160] for w in caught]


def compile_first_call(module: nn.Module, x: torch.Tensor, folder: Path, backend: str) -> tuple[
        Callable[[], object], float, list[str]]:
    """``torch.compile(module)`` with default options (static shapes on a first compile), fresh dynamo state and
    an empty inductor cache directory (no kernels from earlier runs or contenders): the compiled callable, the
    time of the first call (which compiles) and the warnings logged meanwhile."""
    torch._dynamo.reset()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-", dir=folder)
    compiled = torch.compile(module, backend=backend)
    with counted_warnings() as found, torch.no_grad():
        start = time.perf_counter()
        compiled(x)
        seconds = time.perf_counter() - start
    return (lambda: compiled(x)), seconds, found


def warm_up_compiler(folder: Path, backend: str) -> None:
    """Pays the one-time costs of the first ``torch.compile`` in a process (importing inductor, probing the C++
    compiler and the CPU) on a throwaway module, so that they land on no contender's compile time."""
    x = torch.ones(1, 3, 8, 8)
    compile_first_call(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).eval(), x,
                       folder, backend)[0]()


def fresh_process_compile(name: str, prototxt: Path, weights: Path, batch: int, contender: str, backend: str,
                          folder: Path) -> tuple[float, list[str]]:
    """Compile time of one contender in a fresh process (the compiler's warm-up paid first, as in
    :func:`compile_first_call`): inside one process the first real compile also pays several seconds of
    one-time costs that a tiny warm-up does not absorb, and whichever contender came first was charged them."""
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import runtime; "
              "runtime.compile_child(*sys.argv[1:])")
    args = [name, str(prototxt), str(weights), str(batch), contender, backend, str(folder),
            str(torch.get_num_threads())]
    out = subprocess.run([sys.executable, "-c", script, *args], check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["seconds"], result["warnings"]


def compile_child(name: str, prototxt: str, weights: str, batch: str, contender: str, backend: str, folder: str,
                  threads: str) -> None:
    """The child of :func:`fresh_process_compile`: prints ``{"seconds", "warnings"}`` as JSON."""
    torch.set_num_threads(int(threads))
    chw = {**MODELS, **SMOKE_MODELS}[name][1]
    net = prototxt2py.load(Path(prototxt), weights=Path(weights), input_shapes={"data": [int(batch), *chw]}).eval()
    module = net if contender == "ours" else HAND_WRITTEN[name](net)
    x = torch.ones(int(batch), *chw)
    warm_up_compiler(Path(folder), backend)
    _, seconds, found = compile_first_call(module, x, Path(folder), backend)
    print(json.dumps({"seconds": seconds, "warnings": found}))


def compile_times(name: str, prototxt: Path, weights: Path, batch: int, rounds: int, folder: Path,
                  backend: str, compile_rounds: int = 2) -> tuple[Timings, list[str]]:
    """Compile times (best of ``compile_rounds`` fresh processes per contender, in alternating order) and the
    interleaved latency of the compiled runtime module and the compiled hand-written model (outputs checked
    against the eager runtime first), with report lines: compile times, their ratio, warnings while
    compiling."""
    chw = MODELS[name][1]
    net = prototxt2py.load(prototxt, weights=weights, input_shapes={"data": [batch, *chw]}).eval()
    hand = HAND_WRITTEN[name](net)
    x = torch.from_numpy(np.random.default_rng(batch).uniform(-1, 1, (batch, *chw)).astype(np.float32))
    out_name = net.output_names[0]
    with torch.no_grad():
        ref = net(x, all_blobs=True)[out_name]
    labels = {"ours": "prototxt2py, torch.compile", "hand": "hand-written PyTorch, torch.compile"}
    seconds: dict[str, list[float]] = {key: [] for key in labels}
    warned: dict[str, list[str]] = {key: [] for key in labels}
    for r in range(compile_rounds):
        for key in (("ours", "hand") if r % 2 == 0 else ("hand", "ours")):
            took, found = fresh_process_compile(name, prototxt, weights, batch, key, backend, folder)
            seconds[key].append(took)
            warned[key] += found
    lines = []
    for key, label in labels.items():
        lines.append(f"  compile time, {label:40s} {min(seconds[key]):7.1f} s; warnings while compiling: "
                     f"{len(warned[key])}   (fresh processes: {', '.join(f'{t:.1f}' for t in seconds[key])} s)")
        lines += [f"      {text}" for text in list(dict.fromkeys(warned[key]))[:3]]
    lines.append(f"  compile time ratio (prototxt2py / hand-written): "
                 f"{min(seconds['ours']) / min(seconds['hand']):.2f}x (best of {compile_rounds} fresh processes each,"
                 " alternating order)")
    contenders: dict[str, Callable[[], object]] = {}
    for key, module in (("ours", net), ("hand", hand)):
        fn, _, _ = compile_first_call(module, x, folder, backend)
        with torch.no_grad():
            y = fn()
        y = y[out_name] if isinstance(y, dict) else y
        err = float((y.reshape(ref.shape) - ref).abs().max())
        if err > 1e-4 * max(1.0, float(ref.abs().max())):
            raise SystemExit(f"{name}: {labels[key]} differs from prototxt2py by {err:g}")
        contenders[labels[key]] = fn
    with torch.no_grad():
        return interleaved(contenders, rounds), lines


# -- report --------------------------------------------------------------------------------------------------
def table(title: str, rows: Timings, ref: str) -> str:
    lines = [f"\n{title}", f"  {'':58s} {'best ms':>9s} {'median':>9s}   best / best of '{ref}'"]
    for name, (best, median) in rows.items():
        lines.append(f"  {name:58s} {best * 1e3:9.1f} {median * 1e3:9.1f}   {best / rows[ref][0]:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="timing rounds per measurement")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and OpenCV alike (default: their defaults, one per core)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--parts", nargs="+", choices=PARTS,
                        help="what to measure (default: load memory forward, with --smoke all; compile takes minutes "
                             "per model)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16], help="forward and compile batch sizes")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for --parts compile (--smoke: 'eager', dynamo's tracing only)")
    parser.add_argument("--compile-rounds", type=int, default=2,
                        help="fresh processes per contender for the compile time (best taken; alternating order)")
    parser.add_argument("--device", default="cpu",
                        help="where the forward part runs: 'cuda' times the runtime against the hand-written models on "
                             "a GPU (TensorFloat-32 off, Caffe's float32); the other parts always run on the CPU")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny net, one round, every part (or those of --parts); torch.compile at batch 1 with "
                             "the 'eager' backend")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    device = torch.device(args.device)
    if device.type == "cuda":  # cuDNN's default TensorFloat-32 convolutions are not Caffe's float32 (nor the checks')
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.smoke:
        MODELS.update(SMOKE_MODELS)
        args.models, rounds, args.parts = list(SMOKE_MODELS), 1, args.parts or PARTS
        compile_batches, args.compile_backend = [1], "eager"
    else:
        compile_batches = args.batches
    args.parts = args.parts or DEFAULT_PARTS
    if args.threads:
        torch.set_num_threads(args.threads)
        if cv2 is not None:
            cv2.setNumThreads(args.threads)
    gpu = f", forward on {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs{gpu}"
          + (f", OpenCV {cv2.__version__}" if cv2 is not None else ", no OpenCV") + f"; {load_average()}")
    with tempfile.TemporaryDirectory(prefix="prototxt2py-bench-") as tmp:
        files = {}
        for name in args.models:
            files[name] = Path(tmp) / f"{name}.caffemodel"
            generate_weights(MODELS[name][0], files[name])
        for name in args.models:
            prototxt, weights = MODELS[name][0], files[name]
            size = weights.stat().st_size
            print(f"\n=== {name}: {size / 1e6:.1f} MB caffemodel")
            if "load" in args.parts:
                print(table(f"caffemodel -> ready module ({rounds} rounds)", load_times(prototxt, weights, rounds),
                            "plain read of the file"))
            if "memory" in args.parts:
                print("\npeak memory above the baseline while loading, and the time, in a fresh process each")
            for how, label in (("read", "plain read of the file"), ("ours", "prototxt2py.load"),
                               ("opencv", "cv2.dnn.readNetFromCaffe")):
                if "memory" not in args.parts or (how == "opencv" and cv2 is None):
                    continue
                mem = peak_memory(how, prototxt, weights)
                print(f"  {label:40s} {mem['peak'] / 1e6:8.1f} MB  {mem['peak'] / size:.2f}x the file"
                      f" (kept after: {mem['after'] / 1e6:.1f} MB)  {mem['seconds'] * 1e3:6.1f} ms")
            for batch in args.batches if "forward" in args.parts else ():
                n = max(3, rounds // 2) if batch == 16 and name == "ResNet-50" else rounds
                times = forward_times(name, prototxt, weights, batch, n, Path(tmp), device)
                print(table(f"forward, batch {batch} ({n} rounds)", times, "prototxt2py"), flush=True)
            for batch in compile_batches if "compile" in args.parts else ():
                n = max(3, rounds // 2) if batch == 16 and name == "ResNet-50" else rounds
                times, lines = compile_times(name, prototxt, weights, batch, n, Path(tmp), args.compile_backend,
                                             1 if args.smoke else args.compile_rounds)
                print(f"\ntorch.compile (backend {args.compile_backend!r}), batch {batch}")
                print("\n".join(lines))
                print(table(f"compiled forward, batch {batch} ({n} rounds)", times,
                            "hand-written PyTorch, torch.compile"), flush=True)
            print(f"\n({load_average()})")


def load_average() -> str:
    """Other processes skew timings (OpenMP threads suffer most when cores are oversubscribed): say how busy."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


if __name__ == "__main__":
    main()
