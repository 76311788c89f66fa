"""Caffe's key-value stores (``util/db_lmdb.cpp``, ``util/db_leveldb.cpp``): a cursor that walks the records in
key order, and a writer for ``convert-imageset``.

``lmdb`` and ``plyvel`` (LevelDB) are optional packages, imported when a database is opened.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ..fsutil import note_input
from . import DataError, lmdb_check
from ._deps import require

BACKENDS = ("LMDB", "LEVELDB")

#: LMDB environments open in this process, by real path: [environment, users, the data file's stamp when opened].
#: The lmdb package refuses to open one environment twice in a process, and a TRAIN and a TEST net often read
#: the same database.
_LMDB_ENVS: dict[str, list[Any]] = {}
#: LMDB data files found sound by :func:`_check_lmdb`: (real path, size, modification time, inode)
_LMDB_CHECKED: set[tuple[str, int, int, int]] = set()


def _check_lmdb(path: str, layer: str | None) -> None:
    """Refuse a data file cut short or with a corrupt tree before LMDB maps it (:mod:`.lmdb_check`: LMDB would
    kill the process with SIGBUS, SIGSEGV or SIGABRT). A file checked once is not walked again while its size,
    time and inode stay the same (the training feeder's workers open the database again)."""
    data_file = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
    try:
        st = os.stat(data_file)
    except OSError:
        return  # lmdb.open says what is wrong
    key = (os.path.realpath(data_file), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _LMDB_CHECKED:
        return
    try:
        lmdb_check.check_file(data_file)
    except lmdb_check.LmdbCorrupt as e:
        raise DataError(f"LMDB '{path}' {e}", layer=layer) from None
    _LMDB_CHECKED.add(key)


def _data_file_stamp(path: str) -> tuple[int, int, int] | None:
    """The data file's inode, size and modification time (None if it cannot be read)."""
    try:
        st = os.stat(os.path.join(path, "data.mdb") if os.path.isdir(path) else path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _lmdb_env(path: str, layer: str | None) -> Any:
    lmdb = require("lmdb", "reading an LMDB data source", layer)
    key = os.path.realpath(path)
    entry = _LMDB_ENVS.get(key)
    if entry is not None and entry[2] != _data_file_stamp(path):
        # rebuilt since a net of this process opened it: the lmdb package opens no second environment on one
        # path while the first is held, and reading the old one would give the old records without a word
        raise DataError(f"LMDB '{path}' changed on disk while this process still holds the copy it opened (a net "
                        "or solver made before): let those go (del net) before reading it again", layer=layer)
    if entry is None:
        _check_lmdb(path, layer)
        try:
            # lock=False: Caffe's sources are written once and only read afterwards; no lock file is needed (so
            # read-only folders work), and readers in several processes never block each other.
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=os.path.isdir(path))
        except lmdb.Error as e:
            raise DataError(f"cannot open LMDB '{path}': {e}", layer=layer) from None
        entry = _LMDB_ENVS[key] = [env, 0, _data_file_stamp(path)]
    entry[1] += 1
    return entry[0]


def _lmdb_release(path: str) -> None:
    key = os.path.realpath(path)
    entry = _LMDB_ENVS.get(key)
    if entry is not None:
        entry[1] -= 1
        if entry[1] <= 0:
            del _LMDB_ENVS[key]
            entry[0].close()


def _backend(name: str) -> str:
    b = str(name).upper()
    if b not in BACKENDS:
        raise DataError(f"unknown database backend '{name}' (expected lmdb or leveldb)")
    return b


class Cursor:
    """Records of a database in key order, with Caffe's cursor operations (``SeekToFirst``, ``Next``, ``valid``)."""

    def __init__(self, path: str, backend: str, layer: str | None = None):
        self.path = path
        self.backend = _backend(backend)
        self.layer = layer
        if not os.path.exists(path):
            raise DataError(f"data source '{path}' does not exist", layer=layer)
        if not (os.path.isdir(path) or os.path.isfile(path)):  # opening a FIFO would block
            raise DataError(f"data source '{path}' is not a database folder or file (a device, FIFO or socket?)",
                            layer=layer)
        note_input(path)  # a command's output never lands inside a database it reads
        self._db: Any = None
        self._iter: Iterator[tuple[bytes, bytes]] | None = None
        self._item: tuple[bytes, bytes] | None = None
        self._open()
        self.seek_first()

    def _open(self) -> None:
        if self.backend == "LMDB":
            self._db = _lmdb_env(self.path, self.layer)
            self._txn = self._db.begin(buffers=False)
        else:
            plyvel = require("plyvel", "reading a LevelDB data source", self.layer)
            if not os.path.isfile(os.path.join(self.path, "CURRENT")):  # LevelDB would leave LOCK and LOG there
                raise DataError(f"cannot open LevelDB '{self.path}': not a LevelDB folder (no CURRENT file)",
                                layer=self.layer)
            try:
                self._db = plyvel.DB(self.path, create_if_missing=False)
            except Exception as e:  # plyvel raises its own IOError/CorruptionError types
                raise DataError(f"cannot open LevelDB '{self.path}': {e}", layer=self.layer) from None

    def _fresh_iter(self) -> Iterator[tuple[bytes, bytes]]:
        if self.backend == "LMDB":
            return iter(self._txn.cursor())
        return iter(self._db.iterator())

    def seek_first(self) -> None:
        with self._read_errors():
            self._iter = self._fresh_iter()
        self.next()

    def next(self) -> None:
        assert self._iter is not None
        with self._read_errors():
            self._item = next(self._iter, None)

    @contextlib.contextmanager
    def _read_errors(self) -> Iterator[None]:
        """A page or block the store finds corrupt while walking (LMDB's ``MDB_CORRUPTED``, LevelDB's corruption)
        is one error naming the database, where Caffe's ``MDB_CHECK`` aborts."""
        if self.backend == "LMDB":
            import lmdb

            errors: tuple[type[BaseException], ...] = (lmdb.Error,)
        else:
            import plyvel

            errors = (plyvel.Error, OSError)
        try:
            yield
        except errors as e:
            why = " ".join(a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a) for a in e.args) or str(e)
            raise DataError(f"cannot read database '{self.path}' (corrupt?): {why}", layer=self.layer) from None

    @contextlib.contextmanager
    def naming_records(self) -> Iterator[None]:
        """Errors about a record (not a Datum, a broken image, an odd size) name the database it came from."""
        try:
            yield
        except DataError as e:
            if self.path in e.message:
                raise
            raise DataError(f"database '{self.path}': {e.message}", e.location, e.layer) from None

    def valid(self) -> bool:
        return self._item is not None

    def key(self) -> bytes:
        assert self._item is not None
        return self._item[0]

    def value(self) -> bytes:
        assert self._item is not None
        return self._item[1]

    def close(self) -> None:
        if self._db is not None:
            if self.backend == "LMDB":
                self._txn.abort()
                _lmdb_release(self.path)
            else:
                self._db.close()
            self._db = None

    def __del__(self) -> None:  # a reader dropped without close() still releases its LMDB environment
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Writer:
    """A new database at ``path`` (which must not exist), filled by :meth:`put` and committed in chunks of 1000
    records as Caffe's tools do. LMDB's map grows by doubling, as Caffe's ``DoubleMapSize``."""

    def __init__(self, path: str, backend: str):
        self.path = path
        self.backend = _backend(backend)
        self._pending: list[tuple[bytes, bytes]] = []
        if self.backend == "LMDB":
            lmdb = require("lmdb", "writing an LMDB")
            self._map_size = 64 << 20
            os.mkdir(path, 0o755)
            self._db = lmdb.open(path, map_size=self._map_size, subdir=True, lock=True)
        else:
            plyvel = require("plyvel", "writing a LevelDB")
            self._db = plyvel.DB(
                path,
                create_if_missing=True,
                error_if_exists=True,
                block_size=65536,
                write_buffer_size=268435456,
                max_open_files=100,
            )

    def put(self, key: bytes, value: bytes) -> None:
        self._pending.append((key, value))
        if len(self._pending) >= 1000:
            self.commit()

    def commit(self) -> None:
        if not self._pending:
            return
        if self.backend == "LMDB":
            import lmdb

            while True:
                try:
                    with self._db.begin(write=True) as txn:
                        for k, v in self._pending:
                            txn.put(k, v)
                    break
                except lmdb.MapFullError:
                    self._map_size *= 2
                    self._db.set_mapsize(self._map_size)
        else:
            with self._db.write_batch() as wb:
                for k, v in self._pending:
                    wb.put(k, v)
        self._pending.clear()

    def close(self) -> None:
        self.commit()
        self._db.close()
