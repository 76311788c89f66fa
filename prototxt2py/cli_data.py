"""``prototxt2py convert-imageset`` and ``compute-image-mean``: Caffe's dataset tools, registered by cli.py."""

from __future__ import annotations

import click

from .cli import _user_errors, _warn


def register(main: click.Group) -> None:
    """Add the dataset commands to the ``prototxt2py`` group."""
    main.add_command(convert_imageset)
    main.add_command(compute_image_mean)


_BACKEND = click.Choice(["lmdb", "leveldb"], case_sensitive=False)


@click.command("convert-imageset")
@click.argument("root")
@click.argument("list_file", metavar="LIST", type=click.Path())
@click.argument("db", type=click.Path())
@click.option("--resize-height", type=click.IntRange(min=0), default=0, help="Resize images to this height.")
@click.option("--resize-width", type=click.IntRange(min=0), default=0, help="Resize images to this width.")
@click.option("--gray", is_flag=True, help="Read images as greyscale (one channel).")
@click.option("--shuffle", is_flag=True, help="Shuffle the order of the list first.")
# numpy seeds its generators from non-negative integers only, and Caffe's tool has no seed to copy: refuse a
# negative one as a usage error, as --resize-height does, rather than inventing a mapping.
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed of --shuffle.")
@click.option("--encoded", is_flag=True, help="Keep the encoded (JPEG/PNG) bytes instead of raw pixels.")
@click.option("--encode-type", type=click.Choice(["jpg", "png"]), default=None,
              help="Encode as this type (implies --encoded).")
@click.option("--check-size", is_flag=True, help="Require every image to have the same size.")
@click.option("--backend", type=_BACKEND, default="lmdb", show_default=True)
@_user_errors
def convert_imageset(root, list_file, db, resize_height, resize_width, gray, shuffle, seed, encoded, encode_type,
                     check_size, backend) -> None:
    """Write the images of LIST (lines 'path label', paths relative to ROOT) into a new database DB,
    as Caffe's convert_imageset does (Datum records keyed %08d_path)."""
    from .data.images import native_stderr_quiet
    from .data.tools import convert_imageset as convert

    with native_stderr_quiet():  # libpng's own lines: each unreadable image is reported below instead
        report = convert(root, list_file, db, resize_height=resize_height, resize_width=resize_width, gray=gray,
                         shuffle=shuffle, encoded=encoded, encode_type=encode_type or "", backend=backend,
                         check_size=check_size, seed=seed)
    _warn([f"could not read '{path}': skipped" for path in report.skipped])
    click.echo(f"wrote {report.written} images to {db} ({backend.lower()})")


@click.command("compute-image-mean")
@click.argument("db", type=click.Path())
@click.argument("mean", type=click.Path())
@click.option("--backend", type=_BACKEND, default=None, help="Database type (default: detected).")
@_user_errors
def compute_image_mean(db, mean, backend) -> None:
    """Write the mean image of database DB as a .binaryproto (Caffe's compute_image_mean)."""
    from .data.images import native_stderr_quiet
    from .data.tools import compute_image_mean as compute
    from .data.tools import write_mean

    with native_stderr_quiet():  # encoded records that do not decode are one error line, not libpng's too
        values = compute(db, backend)
    write_mean(values, mean)
    per_channel = ", ".join(f"{v:g}" for v in values.reshape(values.shape[0], -1).mean(axis=1))
    click.echo(f"wrote {mean} ({'x'.join(map(str, values.shape))}; channel means {per_channel})")
