"""Fuzz targets: each takes untrusted bytes and must either succeed or raise the project's own error type.

Anything else escaping (KeyError, OverflowError, RecursionError, an ONNX checker failure, ...) is a bug and
is let through, so that atheris reports it with its input; CLI catch-alls are bypassed
(``PROTOTXT2PY_DEBUG=1`` is set for any code that consults it). The limits are lowered while fuzzing so that a
hostile size is refused by the guards (the behaviour under test) instead of exhausting the fuzzer's memory.

Used by ``fuzz/run.sh`` through atheris (``python fuzz/harness.py TARGET [libFuzzer options] DIRS``) and by
``tests/test_hostile_regressions.py``, which replays ``fuzz/regressions/<target>/*`` without atheris.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Limits while fuzzing: small enough that one input can never take more than a few hundred MB.
FUZZ_LIMITS = {
    "max_blob_elements": 4_000_000,
    "max_param_bytes": 64 << 20,
    "max_temp_bytes": 64 << 20,
    "max_text_bytes": 4 << 20,
}
_TMP = Path(tempfile.mkdtemp(prefix="p2p-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def _errors():
    from prototxt2py.errors import Prototxt2pyError

    return Prototxt2pyError


def _limits():
    from prototxt2py import limits

    return limits.override(**FUZZ_LIMITS)


def _text_net(data: bytes):
    from prototxt2py.reader import read_net_text

    return read_net_text(data.decode("utf-8", "replace"), "<fuzz>")


def _graph(source, phase: str):
    import prototxt2py
    from prototxt2py import limits

    g = prototxt2py.graph(source, phase=phase, allow_unknown_types=True)
    limits.check_graph(g)  # where ir.infer_shapes will call the per-node checks
    return g


def target_parse(data: bytes) -> None:
    """Text parse + upgrade + IR building and shape inference, both phases."""
    with _limits():
        try:
            source = _text_net(data)
            for phase in ("TEST", "TRAIN"):
                try:
                    _graph(source, phase)
                except _errors():
                    pass
        except _errors():
            pass


def target_binary(data: bytes) -> None:
    """A binary net (parse_binary_net + upgrade) and the same bytes as a .caffemodel (framing walk, blob refs,
    reading every blob) through a file, as the CLI reads them."""
    from prototxt2py.proto import caffe_pb2
    from prototxt2py.reader import read_binary_message, read_net_binary_data
    from prototxt2py.weights import read_caffemodel

    path = _TMP / "input.bin"
    path.write_bytes(data)
    with _limits():
        try:
            read_net_binary_data(read_binary_message(path, caffe_pb2.NetParameter.DESCRIPTOR), str(path))
        except _errors():
            pass
        try:
            read_caffemodel(path)
        except _errors():
            pass


def target_draw(data: bytes) -> None:
    """draw_net-style diagram of a text net; every DOT written must be accepted by ``dot -Tcanon``."""
    from prototxt2py.backends.draw import build_diagram

    with _limits():
        try:
            source = _text_net(data)
            net = source.raw if source.format == "V2" and source.raw is not None else source.net
            dot = build_diagram(net, "LR", None).source()
        except _errors():
            return
    check_dot(dot)


def check_dot(dot: str) -> None:
    r = subprocess.run(["dot", "-Tcanon"], input=dot.encode(), capture_output=True, timeout=30)
    if r.returncode != 0 or b"syntax error" in r.stderr:
        raise AssertionError(f"Graphviz refused the DOT: {r.stderr[:300]!r}")


def _small_net(data: bytes, phase: str = "TEST"):
    from prototxt2py.backends.torch_runtime import CaffeNet

    source = _text_net(data)
    g = _graph(source, phase)
    return CaffeNet(g)


def target_onnx(data: bytes) -> None:
    """ONNX export of a text net: the checker accepts what is written, or a clean error."""
    from prototxt2py.backends.onnx_export import export_onnx

    with _limits():
        try:
            net = _small_net(data)
            export_onnx(net, _TMP / "out.onnx")
        except _errors():
            pass


def target_run(data: bytes) -> None:
    """A forward pass on zeros of the inferred input shapes."""
    import torch

    with _limits():
        try:
            net = _small_net(data)
            shapes = {net.graph.values[v].blob: net.graph.values[v].shape for v in net.graph.inputs}
            if any(s is None for s in shapes.values()):
                return
            with torch.no_grad():
                net.eval()
                net(**{k: torch.zeros(s) for k, s in shapes.items()}, all_blobs=True)
        except _errors():
            pass


_WARM_UP = (b'layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }\n'
            b'layer { name: "c" type: "Convolution" bottom: "d" top: "c" convolution_param { num_output: 2 '
            b"kernel_size: 1 } }\n")

TARGETS: dict[str, Callable[[bytes], None]] = {
    "parse": target_parse,
    "binary": target_binary,
    "draw": target_draw,
    "onnx": target_onnx,
    "run": target_run,
}


HANG_SECONDS = float(os.environ.get("FUZZ_HANG_SECONDS", "10"))


def _with_watchdog(target: Callable[[bytes], None], name: str) -> Callable[[bytes], None]:
    """Hang detection by a watchdog thread instead of SIGALRM timers (see :func:`_without_alarm_timeout`). An
    input running over ``HANG_SECONDS`` is saved as ``fuzz/out/<target>/artifacts/hang-<sha1>`` and the process
    exits 77."""
    import hashlib
    import threading
    import time

    state: dict = {"start": None, "data": b""}

    def run(data: bytes) -> None:
        state["data"], state["start"] = data, time.monotonic()
        try:
            target(data)
        finally:
            state["start"] = None

    def watch() -> None:
        while True:
            time.sleep(0.25)
            start = state["start"]
            if start is not None and time.monotonic() - start > HANG_SECONDS:
                data = state["data"]
                out = Path(__file__).resolve().parent / "out" / name / "artifacts"
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"hang-{hashlib.sha1(data).hexdigest()}"
                path.write_bytes(data)
                print(f"==HANG== input over {HANG_SECONDS:g} s, saved to {path}", file=sys.stderr, flush=True)
                os._exit(77)

    threading.Thread(target=watch, daemon=True).start()
    return run


def main() -> None:
    import atheris

    os.environ.setdefault("PROTOTXT2PY_DEBUG", "1")  # any catch-all on the way re-raises: bugs are seen
    name = sys.argv.pop(1)
    target = TARGETS[name]
    import numpy  # noqa: F401  (heavy imports before instrumentation: only this package is instrumented)
    import torch  # noqa: F401

    with atheris.instrument_imports(include=["prototxt2py"]):
        import prototxt2py.backends.draw  # noqa: F401
        import prototxt2py.backends.onnx_export  # noqa: F401
        import prototxt2py.backends.torch_runtime  # noqa: F401
        import prototxt2py.reader  # noqa: F401
        import prototxt2py.weights  # noqa: F401
    # Warm up outside the timed runs: lazy imports (onnx, onnxruntime's opset probe, graphviz) on the first
    # input would otherwise count against libFuzzer's 10 s per-input timeout.
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    target(_WARM_UP)
    atheris.Setup(_without_alarm_timeout(sys.argv), _with_watchdog(target, name))
    atheris.Fuzz()


#: libFuzzer's ``-timeout`` the harness always passes: far beyond any run (hangs are the watchdog's job).
ALARM_TIMEOUT_SECONDS = 10**6


def _without_alarm_timeout(argv: list[str]) -> list[str]:
    """``argv`` with any ``-timeout=`` replaced by :data:`ALARM_TIMEOUT_SECONDS`.

    Why: the "unexplained SIGALRM" that killed the ``onnx`` and ``run`` targets after seconds to minutes was
    atheris's own per-input timeout, not the code under test. On its first input atheris arms
    ``setitimer(ITIMER_REAL)`` every ``timeout / 2 + 1`` seconds and installs its SIGALRM handler over any
    other (ignoring the signal beforehand has no effect); ``-timeout=0`` does not disable it but means "any
    input running over 0 s": the 1 s timer fires during the first input that crosses a second boundary, which
    the slow torch targets do soon, and atheris then exits, or (atheris 3) falls back to a default handler
    that dies of "Alarm clock" without an artifact (seen with ``strace -k``: ``atheris::SetupTimeoutAlarm``
    from ``OnFirstTestOneInput``). With a timeout of 10^6 s the timers never fire during a run, and inputs
    over ``FUZZ_HANG_SECONDS`` are still caught, with their input saved, by :func:`_with_watchdog`."""
    return [a for a in argv if not a.startswith("-timeout=")] + [f"-timeout={ALARM_TIMEOUT_SECONDS}"]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
