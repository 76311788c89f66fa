"""``prototxt2py train | test | time``: Caffe's tool commands (``tools/caffe.cpp``) on the PyTorch runtime.

Importing this module imports neither torch nor the solver: the CLI's other commands stay fast. Under
``torchrun`` (``WORLD_SIZE > 1``) ``train`` joins the process group (gloo on CPU, NCCL on GPUs); only rank 0
prints, tests and snapshots.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from .netstate import LEVEL_RANGE, stage_option

EFFECTS = ("stop", "snapshot", "none")


class _Progress:
    """A live status line on a terminal; plain log lines (every ``every`` iterations) otherwise."""

    def __init__(self, images_per_iter: int, every: int, stream: Any = None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.images_per_iter = images_per_iter
        self.every = max(1, every)
        self.start = time.perf_counter()
        self.done = 0

    def __call__(self, info: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        it, last = info["iter"] + 1, info["max_iter"]
        rate = self.done * self.images_per_iter / elapsed if elapsed > 0 else 0.0
        eta = (last - it) * elapsed / self.done if self.done else 0.0
        text = (f"iter {it}/{last}  loss {info['smoothed_loss']:.4g}  lr {info['lr']:.3g}  {rate:.0f} img/s  "
                f"ETA {_duration(eta)}")
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
        elif it % self.every == 0 or it == last:
            self.stream.write(text + "\n")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _Signals:
    """Caffe's ``SignalHandler``: SIGINT/SIGHUP become a one-shot solver action (stop, snapshot or none)."""

    def __init__(self, sigint: str, sighup: str):
        self.effects = {signal.SIGINT: sigint}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup
        self.pending: list[str] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for sig, effect in self.effects.items():
            self.previous[sig] = signal.signal(sig, signal.SIG_IGN if effect == "none" else self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.pending.append(self.effects[signum])

    def request(self) -> str:
        return self.pending.pop(0) if self.pending else "none"

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[tuple[int, int, str]]:
    """Join torchrun's process group when there is one and own its lifetime; yields ``(rank, world, device)``
    (with ``cuda`` each rank takes the GPU of its ``LOCAL_RANK``).

    Ranks finish at different times (rank 0 alone runs the last test pass and snapshots). A rank that reached
    interpreter shutdown with the group still alive destroyed gloo's running threads and died with SIGABRT, so
    a successful run ends at a barrier and every run, failed or not, destroys the group it created."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1, device
        return
    import torch.distributed as dist

    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    created = not dist.is_initialized()
    if created:
        if device.startswith("cuda"):
            import torch

            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
        dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()


def _echo(rank: int, prefix: str = "", glog: bool = False) -> Callable[[str], None]:
    """Log lines to stderr on rank 0; ``glog``: with glog's prefix (``I1207 01:23:45.678901  4242 solver.cpp:0]``,
    ``W`` for warnings), which Caffe's ``tools/extra/parse_log.py`` and ``plot_training_log.py`` read."""
    if rank != 0:
        return lambda line: None
    if not glog:
        return lambda line: click.echo(prefix + line, err=True)
    severity = "W" if prefix.startswith("warning") else "I"

    def echo(line: str) -> None:
        now = datetime.datetime.now()
        click.echo(f"{severity}{now:%m%d %H:%M:%S.%f} {os.getpid():5d} solver.cpp:0] {prefix}{line}", err=True)

    return echo


def train_command(solver: str, weights: str | None, snapshot: str | None, iterations: int | None,
                  sigint_effect: str, sighup_effect: str, device: str, quiet: bool, stages: tuple[str, ...] = (),
                  level: int = 0, data_workers: int | None = None, glog: bool = False) -> None:
    """``caffe train``: solve, optionally fine-tuning from weights or resuming from a snapshot."""
    quiet_image_decoders()
    from .train import get_solver, read_solver_param
    from .train.errors import SolverError
    from .train.snapshot import check_writable

    if weights and snapshot:
        raise SolverError("give --snapshot to resume training or --weights to fine-tune, not both")
    with _process_group(device) as (rank, world, device):
        param = read_solver_param(solver, warn=_echo(rank, "warning: ", glog))
        param.train_state.level = level
        param.train_state.stage.extend(stages)
        if snapshot or weights:  # as Caffe's train: the snapshot's weights, or --weights, replace the solver's list
            del param.weights[:]
        if weights:
            param.weights.append(weights)
        if rank == 0 and param.snapshot_after_train and not param.snapshot:
            # the run ends with a snapshot: its folder is checked now, not after the training (Caffe checks only
            # with a snapshot interval)
            check_writable(param.snapshot_prefix)
        log = _echo(rank, glog=glog)
        for name in (n.strip() for w in param.weights for n in w.split(",")):
            log(f"Finetuning from {name}")
        # Caffe's handler is in place before the solver is built: a signal during set-up is acted on at the
        # first iteration (SIGHUP: a snapshot), not the end of the process
        with _Signals(sigint_effect, sighup_effect) as signals:
            s = get_solver(param, rank=rank, world=world, device=device, data_workers=data_workers,
                           warn=_echo(rank, "warning: ", glog), file=solver)
            s.log = log
            batch = next(iter(s.feeder.shapes().values()), [1])[0]
            progress = (_Progress(batch * param.iter_size * world, param.display or 20) if rank == 0 and not quiet
                        else None)
            s.on_iteration = progress
            s.action_request = signals.request
            try:
                if snapshot:  # caffe train restores before solving (Solve itself is given no resume file)
                    log(f"Resuming from {snapshot}")
                    s.restore(snapshot)
                log("Starting Optimization")
                s.solve(until=iterations)  # --iterations stops early; the lr policy still reads max_iter
                log("Optimization Done.")
            finally:
                if progress is not None:
                    progress.close()
                s.close()
        if s.last_snapshot and rank == 0:
            log(f"last snapshot: {s.last_snapshot[0]}")


def test_command(net: str, weights: str | None, iterations: int, phase: str, stages: tuple[str, ...], level: int,
                 device: str) -> list[tuple[str, float]]:
    """``caffe test``: mean of each output over ``iterations`` batches, logged as Caffe logs them."""
    quiet_image_decoders()
    import numpy as np
    import torch

    from .reader import read_net
    from .train.solver import build_fed_net, check_output_sizes, forward_for_loss

    module, feeder = build_fed_net(read_net(net), phase.upper(), stages, level, 0, 1, torch.device(device),
                                   hold_inputs=True)
    if feeder.held:  # caffe test runs such a net too, on the zeros its Input blobs start with
        click.echo(f"warning: Input blobs {', '.join(feeder.held)} hold zeros (no data layer fills them), as in "
                   "caffe test", err=True)
    if weights:
        from .weights import load_weights

        for line in load_weights(module, weights).warnings():  # layers the file lacks, repeated names
            click.echo(f"warning: {line}", err=True)
    else:
        click.echo("warning: no --weights given: testing Caffe's filler values", err=True)
    module.train(phase.upper() == "TRAIN")
    f32 = np.float32
    scores: list[Any] = []
    names: list[str] = []
    loss = f32(0)
    for i in range(iterations):
        with torch.no_grad():
            blobs = forward_for_loss(module, {k: v.to(device) for k, v in feeder.next_pass().items()})
            loss = f32(loss + f32(module.loss(blobs).item()))
        values = [(n, blobs[n].detach().cpu().numpy().ravel()) for n in module.output_names]
        flat = [(n, f32(x)) for n, v in values for x in v]
        for n, x in flat:
            click.echo(f"Batch {i}, {n} = {x:g}", err=True)
        if i == 0:
            names, scores = [n for n, _ in flat], [x for _, x in flat]
        else:
            check_output_sizes(names, values, i, "the net")
            scores = [f32(s + x) for s, (_, x) in zip(scores, flat, strict=True)]
    feeder.close()
    loss = f32(loss / f32(iterations))
    click.echo(f"Loss: {loss:g}")
    out = []
    for n, s in zip(names, scores, strict=True):
        mean = float(f32(s / f32(iterations)))
        w = module.loss_weights.get(n, 0.0)
        extra = f" (* {w:g} = {w * mean:g} loss)" if w else ""
        click.echo(f"{n} = {mean:g}{extra}")
        out.append((n, mean))
    return out


def time_command(net: str, iterations: int, phase: str, device: str, stages: tuple[str, ...] = (),
                 level: int = 0) -> None:
    """``caffe time``: per-layer forward and backward times (ms, averaged over ``iterations``)."""
    quiet_image_decoders()
    from .train.timing import time_net

    report = time_net(net, iterations, phase.upper(), device, tuple(stages), level)
    click.echo(report)


def quiet_image_decoders() -> None:
    """OpenCV's own messages ("[ WARN:0 ] ... PNG input buffer is incomplete", "[ERROR:0] ... IHDR chunk shall be
    first") would print beside the one error line an unreadable image gets: the level is set before cv2 loads
    (loader workers inherit the environment), or on the module when it is loaded already."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        with contextlib.suppress(AttributeError):
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def register(main: click.Group, user_errors: Callable[[Callable], Callable]) -> None:
    """Add ``train``, ``test`` and ``time`` to the CLI group."""
    device_opt = click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda, cuda:1).")

    @main.command("train")
    @click.argument("solver", type=click.Path())
    @click.option("--weights", help="Initial weights (.caffemodel; comma-separated list) to fine-tune from.")
    @click.option("--snapshot", type=click.Path(), help="A .solverstate to resume from.")
    # 0 is kept: as Caffe with max_iter 0, it runs no iteration but still tests and snapshots at the end (the
    # --weights or filler values, exported in Caffe's format); only a negative count is meaningless
    @click.option("--iterations", type=click.IntRange(min=0),
                  help="Stop at this iteration instead of the solver's max_iter (learning-rate policies still "
                       "use max_iter).")
    @click.option("--sigint-effect", type=click.Choice(EFFECTS), default="stop", show_default=True,
                  help="What Ctrl-C does.")
    @click.option("--sighup-effect", type=click.Choice(EFFECTS), default="snapshot", show_default=True,
                  help="What SIGHUP does.")
    @click.option("--quiet", is_flag=True, help="No progress display (Caffe's log lines only).")
    @click.option("--glog", is_flag=True,
                  help="Prefix log lines as Caffe's glog does (for tools/extra/parse_log.py, plot_training_log.py).")
    @click.option("--stage", "stages", multiple=True, callback=stage_option,
                  help="TRAIN net NetState stage (repeatable; a,b is two stages, as in Caffe).")
    @click.option("--level", type=click.IntRange(*LEVEL_RANGE), default=0, show_default=True,
                  help="TRAIN net NetState level.")
    @click.option("--data-workers", type=int, default=None,
                  help="Loader processes per data layer (default: 2, or 0 for in-memory readers like HDF5Data).")
    @device_opt
    @user_errors
    def train(solver, weights, snapshot, iterations, sigint_effect, sighup_effect, quiet, glog, stages, level,
              data_workers, device) -> None:
        """Train with Caffe's solver rules (as `caffe train --solver=SOLVER`); works under torchrun."""
        train_command(solver, weights, snapshot, iterations, sigint_effect, sighup_effect, device, quiet, stages,
                      level, data_workers, glog)

    @main.command("test")
    @click.argument("net", type=click.Path())
    @click.option("--weights", type=click.Path(), help="Trained .caffemodel.")
    # an average over no batch is NaN (and a negative count prints -0): at least one, as `time` requires
    @click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True,
                  help="Batches to average over.")
    @click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False), default="TEST",
                  show_default=True)
    @click.option("--stage", "stages", multiple=True, callback=stage_option,
                  help="NetState stage (repeatable; a,b is two stages, as in Caffe).")
    @click.option("--level", type=click.IntRange(*LEVEL_RANGE), default=0, show_default=True)
    @device_opt
    @user_errors
    def test(net, weights, iterations, phase, stages, level, device) -> None:
        """Score NET's outputs over batches from its data layers (as `caffe test`)."""
        test_command(net, weights, iterations, phase, stages, level, device)

    @main.command("time")
    @click.argument("net", type=click.Path())
    @click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True)
    @click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False), default="TRAIN",
                  show_default=True)
    @click.option("--stage", "stages", multiple=True, callback=stage_option,
                  help="NetState stage (repeatable; a,b is two stages, as in Caffe).")
    @click.option("--level", type=click.IntRange(*LEVEL_RANGE), default=0, show_default=True)
    @device_opt
    @user_errors
    def time_(net, iterations, phase, stages, level, device) -> None:
        """Per-layer forward/backward timings of NET (as `caffe time`)."""
        time_command(net, iterations, phase, device, stages, level)
