"""A structural check of an LMDB data file before the ``lmdb`` library maps it.

LMDB trusts its pages: it reads them through a memory map, with assertions where it expects a page type. A data
file cut short, or a corrupt page (a node pointer past its page, a record size past the file, a leaf where a
branch should be), kills the reading process with SIGBUS, SIGSEGV or SIGABRT, with no message at all (Caffe's
``MDB_CHECK`` would abort too). A training run or ``compute-image-mean`` reading an untrusted database must
instead stop with one line naming it. So the tree a read transaction walks is checked here first, from the
file's bytes: every branch and leaf page of the main database (not the records' overflow pages, whose contents
are the records themselves; only their extent is checked), against the bounds LMDB relies on.

Layouts (``mdb.c``, 64-bit builds): a page starts with a 16-byte header (page number 0-8, flags 10-12, then
``lower``/``upper`` 12-16, or the page count of an overflow run), then ``lower - 16`` bytes of 2-byte node
offsets. A node is ``lo, hi, flags, ksize`` (2 bytes each), its key, then in a leaf the record (``lo | hi << 16``
bytes) or, with ``F_BIGDATA``, the 8-byte number of the first overflow page holding it; in a branch the child's
page number is ``lo | hi << 16 | flags << 32``. The meta pages (0 and 1) hold ``MDB_meta`` from byte 16: the page
size at 40, the main database's depth at 46, entries at 120 and root at 128, the last page number at 136 and the
transaction id at 144; a read transaction uses the meta with the larger transaction id.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

_MAGIC = 0xBEEFC0DE
_HEADER = 16
_NODE = 8
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META, _P_LEAF2, _P_SUBP = 0x01, 0x02, 0x04, 0x08, 0x20, 0x40
_PAGE_TYPES = _P_BRANCH | _P_LEAF | _P_OVERFLOW | _P_META | _P_LEAF2 | _P_SUBP
_F_BIGDATA, _F_SUBDATA, _F_DUPDATA = 0x01, 0x02, 0x04
_NO_ROOT = (1 << 64) - 1  # P_INVALID: an empty database
_MAX_DEPTH = 32  # LMDB's CURSOR_STACK: a deeper tree (or a cycle) is corrupt


class LmdbCorrupt(Exception):
    """What is wrong with the file, as one sentence (the caller adds the database's name)."""


class NotCaffeDatabase(LmdbCorrupt):
    """A sound LMDB that holds named sub-databases or duplicate keys: Caffe's readers see neither."""


class Meta(NamedTuple):
    page_size: int
    depth: int
    entries: int
    root: int
    last_page: int
    txnid: int

    @property
    def end(self) -> int:
        """Where the file must reach: the end of its last page."""
        return (self.last_page + 1) * self.page_size


def _meta(raw: bytes) -> Meta | None:
    if len(raw) < 152 or struct.unpack_from("<I", raw, 16)[0] != _MAGIC:
        return None
    page_size = struct.unpack_from("<I", raw, 40)[0]
    depth = struct.unpack_from("<H", raw, 94)[0]
    entries, root, last_page, txnid = struct.unpack_from("<QQQQ", raw, 120)
    return Meta(page_size, depth, entries, root, last_page, txnid)


def read_meta(fd: int) -> Meta | None:
    """The meta page a read transaction uses, or None where the file is no LMDB data file this can read
    (``lmdb.open`` then says what is wrong). A second meta page cut off counts as absent."""
    first = _meta(os.pread(fd, 152, 0))
    if first is None or not 152 <= first.page_size <= 1 << 16 or first.page_size & (first.page_size - 1):
        return None
    second = _meta(os.pread(fd, 152, first.page_size))
    if second is None or second.txnid <= first.txnid:
        return first
    if second.page_size != first.page_size:  # (the newer one is read; LMDB never changes a file's page size)
        raise LmdbCorrupt(f"its meta pages give page sizes {first.page_size} and {second.page_size}")
    return second


def check_file(data_file: str) -> None:
    """Check an LMDB data file; raise :class:`LmdbCorrupt` with a sentence that starts "is truncated" or "is
    corrupt" and names the file. A file this cannot read as LMDB (or at all) is left to ``lmdb.open``."""
    try:
        fd = os.open(data_file, os.O_RDONLY)
    except OSError:
        return
    try:
        try:
            meta = read_meta(fd)
        except LmdbCorrupt as e:
            raise LmdbCorrupt(f"is corrupt: {data_file}: {e}") from None
        if meta is None:
            return
        size = os.fstat(fd).st_size
        if size < meta.end:
            raise LmdbCorrupt(f"is truncated: {data_file} holds {size} bytes, its last page ends at byte "
                              f"{meta.end} (an interrupted copy?)")
        try:
            check_tree(fd, meta)
        except NotCaffeDatabase as e:
            raise NotCaffeDatabase(f"is not a Caffe database: {data_file}: {e}") from None
        except LmdbCorrupt as e:
            raise LmdbCorrupt(f"is corrupt: {data_file}: {e}") from None
    except OSError:  # (a read error: lmdb.open or the cursor will say what it is)
        return
    finally:
        os.close(fd)


def check_tree(fd: int, meta: Meta) -> None:
    """Check the main database's tree in the open file ``fd`` (at least ``meta.end`` bytes long); raise
    :class:`LmdbCorrupt`. Each page may be reached once (a second reference is a cycle or a shared page, and
    would make the walk's cost grow with the references, not the file)."""
    if meta.root == _NO_ROOT:
        if meta.entries or meta.depth:
            raise LmdbCorrupt(f"its meta page gives no root page but {meta.entries} records")
        return
    if not 1 <= meta.depth <= _MAX_DEPTH:
        raise LmdbCorrupt(f"its meta page gives a tree depth of {meta.depth} (expected 1 to {_MAX_DEPTH})")
    leaves = 0
    level = [meta.root]
    seen: set[int] = set()
    for depth in range(1, meta.depth + 1):
        below: list[int] = []
        for number in level:
            if number in seen:
                raise LmdbCorrupt(f"page {number} is reached twice in the tree")
            seen.add(number)
            leaves += _check_page(fd, meta, number, depth == meta.depth, below)
        level = below
    if leaves != meta.entries:
        raise LmdbCorrupt(f"its leaf pages hold {leaves} records, its meta page says {meta.entries}")


def _page(fd: int, meta: Meta, number: int, what: str) -> bytes:
    if not 2 <= number <= meta.last_page:
        raise LmdbCorrupt(f"{what} {number} is outside the file's pages 2..{meta.last_page}")
    raw = os.pread(fd, meta.page_size, number * meta.page_size)
    if len(raw) < meta.page_size:  # (the file shrank while it was read)
        raise LmdbCorrupt(f"page {number} is cut short")
    if struct.unpack_from("<Q", raw, 0)[0] != number:
        raise LmdbCorrupt(f"page {number} is stamped as page {struct.unpack_from('<Q', raw, 0)[0]}")
    return raw


def _check_page(fd: int, meta: Meta, number: int, leaf: bool, below: list[int]) -> int:
    """Check one branch or leaf page (appending a branch's children to ``below``); returns its record count."""
    raw = _page(fd, meta, number, "the root page number" if number == meta.root else "a child page number")
    flags, lower, upper = struct.unpack_from("<HHH", raw, 10)
    kind = "leaf" if leaf else "branch"
    if flags & _PAGE_TYPES != (_P_LEAF if leaf else _P_BRANCH):
        raise LmdbCorrupt(f"page {number} should be a {kind} page, its flags are {flags:#x}")
    if not _HEADER <= lower <= upper <= meta.page_size or lower % 2:
        raise LmdbCorrupt(f"page {number}: its free-space bounds {lower}..{upper} do not fit a "
                          f"{meta.page_size}-byte page")
    count = (lower - _HEADER) // 2
    if not leaf and count < 2:  # mdb_page_search_root asserts NUMKEYS > 1
        raise LmdbCorrupt(f"page {number} is a branch page with {count} children")
    end = meta.page_size
    for i, offset in enumerate(struct.unpack_from(f"<{count}H", raw, _HEADER)):
        if offset < upper or offset + _NODE > end:
            raise LmdbCorrupt(f"page {number}: node {i} starts at byte {offset}, outside the page's nodes "
                              f"({upper}..{end})")
        lo, hi, node_flags, key_size = struct.unpack_from("<HHHH", raw, offset)
        data = offset + _NODE + key_size
        if leaf:
            if node_flags & ~_F_BIGDATA:
                if node_flags in (_F_SUBDATA, _F_DUPDATA | _F_SUBDATA, _F_DUPDATA):
                    raise NotCaffeDatabase(f"record {i} of page {number} is a named sub-database or a set of "
                                           "duplicate values, which Caffe's databases never hold")
                raise LmdbCorrupt(f"page {number}: record {i} has flags {node_flags:#x} (a Caffe database holds "
                                  "plain records)")
            length = lo | hi << 16
            if node_flags & _F_BIGDATA:
                if data + 8 > end:
                    raise LmdbCorrupt(f"page {number}: record {i}'s key runs past the page")
                first = struct.unpack_from("<Q", raw, data)[0]
                if not 2 <= first <= meta.last_page or first * meta.page_size + _HEADER + length > meta.end:
                    raise LmdbCorrupt(f"page {number}: record {i} ({length} bytes from page {first}) runs past "
                                      "the file's last page")
            elif data + length > end:
                raise LmdbCorrupt(f"page {number}: record {i} ({key_size}-byte key, {length}-byte value) runs "
                                  "past the page")
        else:
            if data > end:
                raise LmdbCorrupt(f"page {number}: node {i}'s key runs past the page")
            below.append(lo | hi << 16 | node_flags << 32)
    return count if leaf else 0
