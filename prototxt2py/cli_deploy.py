"""``prototxt2py deploy`` and the ``--deploy`` option of ``summary``/``run``/``convert``/``draw``.

Kept apart from ``cli.py`` so that the command and its shared helper live next to each other; ``cli.py`` only
registers the command and calls :func:`net_source`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import click

from .reader import NetSource


def deploy_option(fn: Callable) -> Callable:
    """``--deploy``: derive the deploy net (as ``prototxt2py deploy`` does) before doing anything else."""
    return click.option("--deploy", "as_deploy", is_flag=True,
                        help="NET is a train_val net: derive its deploy net on the fly (see `deploy`).")(fn)


def net_source(
    path: str,
    as_deploy: bool,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    stages: Iterable[str] = (),
    level: int = 0,
    check_inputs: bool = True,
    need_shapes: bool = True,
) -> NetSource:
    """The net a command works on: the file as read (and upgraded), or its derived deploy net."""
    from .reader import read_net

    source = read_net(path)
    if not as_deploy:
        return source
    from .deploy import deploy_source

    return deploy_source(source, input_shapes, stages, level, check_inputs, need_shapes)


def register(main: click.Group, parse_inputs: Callable, state_options: Callable, user_errors: Callable,
             warn: Callable) -> None:
    """Add the ``deploy`` command to the CLI group (the helpers are cli.py's, passed in to avoid a cycle)."""

    @main.command()
    @click.argument("net", type=click.Path())
    @click.option("-o", "--output", required=True, type=click.Path(), help="Deploy .prototxt.")
    @click.option("--input", "inputs", multiple=True, metavar="NAME=D0,D1,...",
                  help="Shape of an input blob (needed where only the data knows it).")
    @state_options
    @user_errors
    def deploy(net: str, output: str, inputs: tuple[str, ...], stages: tuple[str, ...], level: int) -> None:
        """Derive a deploy net from a train_val NET, as Caffe users do by hand.

        Data layers become one Input layer (shape from the transform's crop size, mean values or mean file,
        else --input), the TEST phase is kept, losses, accuracies and label-only branches are dropped, and the
        main SoftmaxWithLoss becomes a Softmax.
        """
        from .deploy import deploy_text, derive_deploy
        from .fsutil import write_text_atomic
        from .reader import read_net

        source = read_net(net)
        warn(source.warnings)
        result = derive_deploy(source, parse_inputs(inputs), stages, level)
        write_text_atomic(output, deploy_text(result))
        for note in result.notes:
            click.echo(note)
        click.echo(f"wrote {output} ({len(result.net.layer)} layers)")
