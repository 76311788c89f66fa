"""The ``prototxt2py`` command line: a thin layer over the Python API.

Exit codes: 0 success; 1 a problem with the input (the message names file:line:col or layer);
2 wrong usage (click); 3 an internal error (a bug: please report it; set PROTOTXT2PY_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from . import limits, memguard
from .cli_deploy import deploy_option, net_source
from .cli_deploy import register as register_deploy
from .errors import Prototxt2pyError, UpgradeError, one_line
from .fsutil import guarding_inputs
from .netstate import LEVEL_RANGE, stage_option

EXIT_INPUT, EXIT_INTERNAL = 1, 3


def _user_errors(fn: Callable) -> Callable:
    """Turn library errors into one line on stderr and a documented exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with guarding_inputs():  # the command's outputs never replace what it read
                return fn(*args, **kwargs)
        except Prototxt2pyError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_INPUT)
        except KeyboardInterrupt:
            sys.exit(130)
        except click.ClickException:  # a malformed option value found in the command's body: click's usage error
            raise
        except Exception as e:  # a bug: say so in one line
            if os.environ.get("PROTOTXT2PY_DEBUG"):
                raise
            if _out_of_memory(e):  # the input asks for more memory than there is: a problem with the input
                reason = f" ({one_line(str(e))[:200]})" if str(e) else ""
                click.echo(f"error: out of memory{reason}; the net or its inputs are too big for this machine (see "
                           "docs/errors.md: limits)", err=True)
                sys.exit(EXIT_INPUT)
            if isinstance(e, OSError) and e.errno in _STDOUT_ERRNOS:
                _stdout_failed(e)
            bad_path = _bad_path(e)
            if bad_path:  # a path given on the command line (or named in a file) that the system refuses
                click.echo(f"error: {bad_path}", err=True)
                sys.exit(EXIT_INPUT)
            click.echo(f"internal error: {type(e).__name__}: {one_line(str(e))[:1000]} (set PROTOTXT2PY_DEBUG=1 "
                       "for details)", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


#: errors of a write to standard output (``> /dev/full``, a quota, a closed pipe): outputs to files are written
#: atomically and report their own errors, so a raw OSError with one of these comes from printing the result
_STDOUT_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EPIPE})


def _stdout_failed(e: OSError) -> NoReturn:
    with contextlib.suppress(OSError):  # nothing more goes there, not even the interpreter's flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if e.errno == errno.EPIPE:  # the reader went away (`| head`): no error, as for other Unix tools
        sys.exit(0)
    click.echo(f"error: cannot write to standard output: {e.strerror or e}", err=True)
    sys.exit(EXIT_INPUT)


def _bad_path(e: BaseException) -> str | None:
    """One line for a file-system refusal of a path no reader checked first (a name too long, a directory
    missing, no permission, a NUL byte in it), else None."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        name = one_line(str(e.filename))
        return f"{name if len(name) <= 200 else name[:80] + f'... ({len(name)} characters)'}: {e.strerror}"
    if isinstance(e, ValueError) and "embedded null byte" in str(e):
        return "a file name holds a NUL byte"
    return None


def _out_of_memory(e: BaseException) -> bool:
    """MemoryError, torch's allocator failing (a RuntimeError that only its text identifies), or a shared library
    that could not be mapped (an ImportError/OSError under a low ``ulimit -v``)."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    if isinstance(e, (ImportError, OSError)):
        return "failed to map segment" in text or "cannot allocate memory" in text.lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


def _parse_inputs(values: tuple[str, ...]) -> dict[str, list[int]]:
    out = {}
    for v in values:
        name, sep, dims = v.partition("=")
        try:
            shape = [int(d) for d in dims.replace("x", ",").split(",")]  # an empty field is an error, not skipped
        except ValueError:
            shape = []
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise click.BadParameter(f"{v!r}: expected NAME=D0,D1,... with positive integers", param_hint="--input")
        limits.check_shape(shape, f"--input {name}")  # Caffe's int dims and count, before a writer sees them
        out[name] = shape
    return out


def _state_options(fn: Callable) -> Callable:
    fn = click.option("--level", type=click.IntRange(*LEVEL_RANGE), default=0, show_default=True,
                      help="NetState level.")(fn)
    fn = click.option("--stage", "stages", multiple=True, callback=stage_option,
                      help="NetState stage (repeatable; a,b is two stages, as in Caffe).")(fn)
    return fn


def _warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"warning: {one_line(line)}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prototxt2py")
def main() -> None:
    """Inspect, draw, run and convert Caffe models without Caffe."""
    memguard.install()  # under a low `ulimit -v`, one error line instead of an abort while loading torch


@main.command()
@click.argument("net", type=click.Path())
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False), default="TEST", show_default=True)
@_state_options
@click.option("--input", "inputs", multiple=True, metavar="NAME=D0,D1,...", help="Override an input blob's shape.")
@click.option("--json", "as_json", is_flag=True, help="Print blob shapes, parameter shapes and totals as JSON.")
@deploy_option
@_user_errors
def summary(net: str, phase: str, stages: tuple[str, ...], level: int, inputs: tuple[str, ...], as_json: bool,
            as_deploy: bool) -> None:
    """Print a layer table (output shapes, parameters, MACs) of NET."""
    from . import graph as build
    from .summary import summary_json, summary_table

    source = net_source(net, as_deploy, _parse_inputs(inputs), stages, level)
    _warn(source.warnings)
    g = build(source, phase.upper(), stages, level, _parse_inputs(inputs))
    if as_json:
        click.echo(json.dumps(summary_json(g), indent=1))
    else:
        click.echo(summary_table(g))


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@_user_errors
def upgrade(src: str, dst: str) -> None:
    """Upgrade a legacy net (text or binary .caffemodel) or solver to the current format."""
    from .upgrade_io import upgrade_file

    kind, report = upgrade_file(src, dst)
    _warn(report.warnings)
    steps = ", ".join(report.steps) if report.steps else "already in the latest format"
    click.echo(f"{kind}: {steps} -> {dst}")
    if report.errors:  # Caffe's tools log them, write the upgraded file all the same and exit with 1
        raise UpgradeError(f"upgraded with {len(report.errors)} error(s), written anyway as Caffe's tool does: "
                           + "; ".join(report.errors))


@main.command()
@click.option("--markdown", is_flag=True, help="Print a Markdown table (the README's layer table).")
@_user_errors
def layers(markdown: bool) -> None:
    """List supported layer types and which backends support each."""
    from .layer_table import layer_table

    click.echo(layer_table(markdown))


def _load_net(net: str, weights: str | None, phase: str, stages, level: int, input_shapes=None, as_deploy=False,
              check_inputs=True):
    from . import graph as build
    from .backends.torch_runtime import CaffeNet

    source = net_source(net, as_deploy, input_shapes, stages, level, check_inputs)
    _warn(source.warnings)
    g = build(source, phase.upper(), stages, level, input_shapes)
    if not weights:
        return CaffeNet(g)
    module = CaffeNet.from_weights(g, weights)  # blobs not filled first; the ones the file lacks are, after
    _warn(module.load_report.warnings())
    return module


@main.command()
@click.argument("net", type=click.Path())
@click.option("--weights", type=click.Path(), help="Trained .caffemodel.")
@click.option("--inputs", "inputs_path", required=True, type=click.Path(),
              help=".npz with one array per input blob (by name).")
@click.option("-o", "--output", required=True, type=click.Path(), help="Output .npz.")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False), default="TEST", show_default=True)
@_state_options
@click.option("--all-blobs", is_flag=True, help="Write every blob (by Caffe name), not only the outputs.")
@deploy_option
@_user_errors
def run(net, weights, inputs_path, output, phase, stages, level, all_blobs, as_deploy) -> None:
    """Run a forward pass of NET on named input arrays and write the results to an .npz."""
    from .runner import run_npz

    run_npz(lambda shapes: _load_net(net, weights, phase, stages, level, shapes, as_deploy, False), inputs_path,
            output, all_blobs)
    click.echo(f"wrote {output}")


@main.command()
@click.argument("net", type=click.Path())
@click.option("--weights", type=click.Path(), help="Trained .caffemodel (else Caffe's fillers).")
@click.option("--to", "target", required=True,
              type=click.Choice(["pytorch", "safetensors", "caffemodel", "onnx", "python"], case_sensitive=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Output file (a folder for --to python).")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False), default="TEST", show_default=True)
@_state_options
@click.option("--input", "inputs", multiple=True, metavar="NAME=D0,D1,...", help="Override an input blob's shape.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: see README).")
@click.option("--dynamic-batch/--static", default=False, help="ONNX: make the batch axis dynamic.")
@click.option("--dynamic", is_flag=True, default=False,
              help="ONNX: make batch, height and width dynamic (fully convolutional nets, e.g. MTCNN's P-Net).")
@deploy_option
@_user_errors
def convert(net, weights, target, output, phase, stages, level, inputs, opset, dynamic_batch, dynamic,
            as_deploy) -> None:
    """Convert NET (+ weights) to a PyTorch state_dict, safetensors, a .caffemodel, ONNX, or a generated Python
    module (``--to python -o OUTDIR``: OUTDIR/<net>.py, and OUTDIR/<net>.pt with --weights)."""
    from .convert import ARRAY_TARGETS, convert_net, write_python

    if target.lower() in ARRAY_TARGETS:  # arrays only: no torch (see convert.convert_graph)
        from .cli_convert import convert_arrays

        convert_arrays(net, weights, target.lower(), output, phase, stages, level, _parse_inputs(inputs), opset,
                       dynamic_batch, as_deploy, _warn, dynamic)
        click.echo(f"wrote {output}")
        return
    module = _load_net(net, weights, phase, stages, level, _parse_inputs(inputs), as_deploy)
    if target.lower() == "python":
        written = [p for p in write_python(module, output, with_weights=bool(weights)) if p]
        click.echo(f"wrote {', '.join(written)}")
        return
    if not weights:
        _warn(["no --weights given: parameters hold Caffe's filler values"])
    convert_net(module, target.lower(), output, opset=opset, dynamic_batch=dynamic_batch, dynamic=dynamic)
    click.echo(f"wrote {output}")


@main.command()
@click.argument("net", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--rankdir", type=click.Choice(["LR", "TB", "BT", "RL"]), default="LR", show_default=True)
@click.option("--phase", type=click.Choice(["TRAIN", "TEST", "ALL"], case_sensitive=False), default="ALL",
              show_default=True)
@click.option("--display-lrm", is_flag=True, help="Show lr_mult of Convolution/Deconvolution/InnerProduct layers.")
@click.option("--level", type=click.IntRange(*LEVEL_RANGE), default=None,
              help="NetState level, replacing the net's own (with --level or --stage all NetState rules filter; "
                   "without, only the phase, as Caffe's draw_net.py).")
@click.option("--stage", "stages", multiple=True, callback=stage_option,
              help="NetState stage (repeatable; a,b is two stages, as in Caffe).")
@click.option("--shapes", is_flag=True, help="Annotate blobs with inferred shapes and layers with parameter counts.")
@click.option("--no-blobs", is_flag=True, help="Compact: layer-to-layer edges without blob nodes.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=D0,D1,...", help="An input blob's shape (--shapes).")
@deploy_option
@_user_errors
def draw(net, output, rankdir, phase, display_lrm, stages, level, shapes, no_blobs, inputs, as_deploy) -> None:
    """Draw NET as a diagram; the format follows OUTPUT's extension (.png .svg .pdf .dot ...)."""
    from .backends.draw import draw_file

    input_shapes = _parse_inputs(inputs)
    # the deploy net `deploy` derives (level 0 unless given), drawn as it is
    source = (net_source(net, True, input_shapes, stages, 0 if level is None else level, need_shapes=shapes)
              if as_deploy else net)
    draw_file(source, output, rankdir=rankdir, phase=phase.upper(), display_lrm=display_lrm, stages=stages, level=level,
              shapes=shapes, no_blobs=no_blobs, input_shapes=input_shapes)
    click.echo(f"wrote {output}")


from .cli_data import register as _register_data  # noqa: E402  (dataset tools live in their own module)

_register_data(main)
register_deploy(main, _parse_inputs, _state_options, _user_errors, _warn)

from .cli_train import register as _register_train  # noqa: E402  (train/test/time live in their own module)

_register_train(main, _user_errors)
