"""Atomic output files: a failed command never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InputFileError, Location

#: (device, inode) of every file the running command has read as an input: its outputs never replace one of
#: them (``upgrade net.prototxt net.prototxt``, ``draw a.prototxt a.prototxt``), whatever the path spelling.
_inputs: set[tuple[int, int]] = set()
_guarding = [False]


@contextlib.contextmanager
def guarding_inputs() -> Iterator[None]:
    """For one CLI command: outputs may not replace a file the command read. Library calls outside (pycaffe's
    ``net.save`` over a file loaded earlier in a session, a snapshot over the state a solver was restored from)
    overwrite, as Caffe does: in a long-lived process "read once" is no reason to refuse."""
    _inputs.clear()
    _guarding[0] = True
    try:
        yield
    finally:
        _guarding[0] = False
        _inputs.clear()


def note_input(fd_or_path: int | str | os.PathLike) -> None:
    """Remember a file as an input (called by the readers with the open descriptor) while a command runs; a
    database folder counts with everything in it."""
    if not _guarding[0]:
        return
    try:
        info = os.fstat(fd_or_path) if isinstance(fd_or_path, int) else os.stat(fd_or_path)
    except OSError:
        return
    _inputs.add((info.st_dev, info.st_ino))


def _is_input(target: Path) -> bool:
    """``target`` was read, or lies inside a directory that was (an LMDB or LevelDB folder)."""
    if not _guarding[0]:
        return False
    for path in (target, *target.resolve().parents):
        try:
            info = path.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in _inputs:
            return True
    return False


def open_regular(path: str | os.PathLike, mode: str = "rb", **kwargs: Any) -> IO:
    """``open`` for an input that must be a regular file. A FIFO, device or directory raises OSError (its
    ``strerror`` saying so, for the callers' one-line errors) instead of blocking on the open or reading
    ``/dev/zero`` until memory runs out."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        kind = os.fstat(fd).st_mode
        if stat.S_ISDIR(kind):
            raise IsADirectoryError(errno.EISDIR, "is a directory, expected a file", str(path))
        if not stat.S_ISREG(kind):
            raise OSError(errno.EINVAL, "not a regular file (a device, FIFO or socket)", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def output_target(path: str | os.PathLike) -> Path:
    """The file an output for ``path`` is renamed onto, refused (one line) before anything is written when
    renaming would destroy something else: a missing directory, a directory, a file read as an input, or a
    device, pipe or socket (``-o /dev/null`` run as root would otherwise replace the device node with a regular
    file). A symbolic link is written through: its target is replaced and the link stays, as ``cp`` does."""
    if "\0" in os.fsdecode(path):  # what every system call would refuse with a bare "embedded null byte"
        raise InputFileError("the output file name holds a NUL byte", Location(repr(os.fsdecode(path))[1:-1]))
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    directory = target.parent  # Path("x").parent is Path(".")
    if not directory.is_dir():
        raise InputFileError("output directory does not exist", Location(str(path)))
    if target.is_dir():
        raise InputFileError("output is a directory, expected a file name", Location(str(path)))
    if target.exists() and not target.is_file():
        raise InputFileError("output exists and is not a regular file (a device, pipe or socket); refusing to "
                             "replace it", Location(str(path)))
    if _is_input(target):
        raise InputFileError("refusing to overwrite an input file (or a file of an input database) with the "
                             "output", Location(str(path)))
    return target


def temp_beside(target: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, str]:
    """A new temporary file in ``target``'s directory (so that renaming it onto ``target`` cannot cross devices),
    named after ``target`` but short enough for any name that fits itself: ``.<first 40 chars>.XXXXXXXX.tmp``."""
    target = Path(target)
    return tempfile.mkstemp(prefix=f".{target.name[:40]}.", suffix=suffix, dir=target.parent)


def replace_together(moves: list[tuple[str | os.PathLike, str | os.PathLike]]) -> None:
    """Rename each finished temporary onto its target, all or none: the files a target replaces are first moved
    aside (beside it), and put back if any rename fails, so a pair (a model and its weights) is never left half
    old, half new. ``OSError`` propagates, naming nothing: callers say which output it was."""
    aside: list[tuple[str, Path]] = []
    placed: list[Path] = []
    try:
        for _, target in moves:
            target = Path(target)
            if target.exists():
                fd, backup = temp_beside(target, ".old")
                os.close(fd)
                try:
                    os.replace(target, backup)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.unlink(backup)
                    raise
                aside.append((backup, target))
        for tmp, target in moves:
            os.replace(tmp, target)
            placed.append(Path(target))
    except BaseException:
        for target in placed:
            with contextlib.suppress(OSError):
                os.unlink(target)
        for backup, target in aside:
            with contextlib.suppress(OSError):
                os.replace(backup, target)
        raise
    for backup, _ in aside:
        with contextlib.suppress(OSError):
            os.unlink(backup)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file next to ``path`` and rename it into place only on success; what
    :func:`output_target` refuses is refused before anything is written."""
    target = output_target(path)
    try:
        fd, tmp = temp_beside(target)
    except OSError as e:
        raise InputFileError(f"cannot write the output: {e.strerror or e}", Location(str(path))) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; a normal output file follows the umask
        os.replace(tmp, target)
    except OSError as e:  # a full disk, a file-size limit, a quota: one line naming the output, nothing left
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise InputFileError(f"cannot write the output: {e.strerror or e}", Location(str(path))) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and back): outputs made by ``mkstemp`` (0600) follow it."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path, "w") as f:
        f.write(text)
