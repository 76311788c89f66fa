"""C's maths where Caffe's results depend on the last bit.

Caffe's learning-rate policies and Power's constant top call the C library's ``pow``/``powf``. numpy's
``power`` dispatches to SIMD approximations on CPUs with AVX-512 and its float32 result is then an ulp off on
one input in five, so learning rates compared bit for bit against Caffe's drifted with the CPU. The C library's
own functions are called where they can be loaded; elsewhere float64 ``pow`` (rounded once to float32 for
``powf``; glibc's ``powf`` is not always correctly rounded: the two differ on about one input in two thousand,
by one ulp).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache

from .lazy_numpy import np


def _maths_libraries() -> Iterator[str | None]:
    """Names of the C maths library to try, the usual ones first (``find_library`` runs ``ldconfig``)."""
    yield "libm.so.6"
    yield "libSystem.dylib"
    import ctypes.util

    yield ctypes.util.find_library("m")


@cache
def _libm(name: str, double: bool) -> Callable[[float, float], float] | None:
    """The C library's two-argument function ``name`` on doubles or floats, or None where none loads. ctypes is
    imported here, on first use: the CLI's start-up never needs it."""
    import ctypes

    ctype = ctypes.c_double if double else ctypes.c_float
    for lib in _maths_libraries():
        try:
            fn = getattr(ctypes.CDLL(lib), name) if lib else None
        except (OSError, AttributeError):
            continue
        if fn is not None:
            fn.restype = ctype
            fn.argtypes = [ctype, ctype]
            return fn
    return None


def powf(base: float, exponent: float) -> np.float32:
    """C's ``powf`` of two float32 values, with its inf and NaN (no warnings)."""
    b, e = np.float32(base), np.float32(exponent)
    fn = _libm("powf", False)
    if fn is not None:
        return np.float32(fn(b, e))
    with np.errstate(all="ignore"):
        return np.float32(np.power(np.float64(b), np.float64(e)))


def pow_(base: float, exponent: float) -> float:
    """C's ``pow`` of two doubles: inf on overflow, NaN for a negative base and a fractional exponent (Python's
    ``**`` raises or goes complex)."""
    fn = _libm("pow", True)
    if fn is not None:
        return float(fn(float(base), float(exponent)))
    with np.errstate(all="ignore"):
        return float(np.power(np.float64(base), np.float64(exponent)))
