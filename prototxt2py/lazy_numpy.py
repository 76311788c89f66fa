"""numpy, imported on its first use.

Layer specs and fillers use numpy only to build ONNX constants and fill or fold blobs, yet every CLI command
imports them; importing numpy costs 60-100 ms of a process that ``summary``, ``upgrade``, ``draw`` or
``layers`` (issue 21's start-up goals) never spends on arrays. Modules write ``from .lazy_numpy import np``
and use ``np.<name>`` as usual; annotations stay strings (``from __future__ import annotations``), and type
checkers see the real module through the ``TYPE_CHECKING`` import there."""

from __future__ import annotations

from typing import Any


class _LazyNumpy:
    """Resolves attributes on the real ``numpy`` module, importing it the first time one is asked for."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        import numpy

        return getattr(numpy, name)

    def __repr__(self) -> str:
        return "<numpy, imported on first use>"


np: Any = _LazyNumpy()
