"""Refuse in one line to load PyTorch into an address space too small for it (``ulimit -v``).

Why: under a low ``RLIMIT_AS``, ``import torch`` fails in ways no ``except`` can turn into an error line:
mapping ``libtorch_cpu.so`` fails (an ImportError, at least catchable), or a static initialiser of
``torch._C`` throws ``std::bad_alloc`` and the process aborts (exit 134, measured at 400 MB), or glibc cannot
allocate thread-local data and aborts (600 MB). The CLI therefore installs :class:`TorchAddressSpaceGuard`,
which checks, just before the first ``import torch``, that the limit leaves room for torch's shared libraries
(their file sizes, about 450 MB for torch 2.x CPU) plus a margin over what the process already maps, and
raises :class:`~prototxt2py.errors.ResourceLimitError` otherwise. Commands that never import torch are not
affected; nothing is checked when no limit is set.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .errors import ResourceLimitError

#: Room for torch's heap, thread stacks and static data beyond its libraries' mapped files (measured: importing
#: torch adds about 40 MB beyond the libraries, a LeNet forward pass about 100 MB more).
MARGIN_BYTES = 192 << 20


def _address_space_limit() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not a Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def _mapped_bytes() -> int:
    """This process's address space in use now (``VmSize``; 0 where /proc is not available)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _torch_library_bytes() -> int:
    """Total size of torch's shared libraries (what loading it maps, at least); 0 if torch is not found."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return 0
    total = 0
    for path in (Path(spec.origin).parent / "lib").glob("*.so*"):
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return total


def check_torch_fits() -> None:
    """Raise :class:`ResourceLimitError` if loading torch would exceed the address-space limit."""
    limit = _address_space_limit()
    if limit is None:
        return
    used, need = _mapped_bytes(), _torch_library_bytes() + MARGIN_BYTES
    if used + need > limit:
        raise ResourceLimitError(
            f"not enough memory to load PyTorch: the address-space limit (ulimit -v) is {limit >> 20} MiB, this "
            f"process maps {used >> 20} MiB and torch needs about {need >> 20} MiB more; raise the limit to at "
            f"least {-(-(used + need) >> 20)} MiB (commands that compute nothing, e.g. summary, convert --to onnx, "
            "need no torch)")


class TorchAddressSpaceGuard(importlib.abc.MetaPathFinder):
    """A meta path finder that runs :func:`check_torch_fits` once, when ``torch`` is first imported, and
    otherwise finds nothing (the normal finders then load torch)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "torch" and "torch" not in sys.modules:
            uninstall()  # checked once; also keeps find_spec("torch") inside the check from recursing
            check_torch_fits()
        return None


def install() -> None:
    """Guard the first ``import torch`` of this process (the CLI calls this; idempotent)."""
    if "torch" not in sys.modules and not any(isinstance(f, TorchAddressSpaceGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, TorchAddressSpaceGuard())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TorchAddressSpaceGuard)]
