"""C's float maths where Caffe's results depend on its last bit.

Caffe's learning-rate policies and Power's constant top call the C library's ``powf``. numpy's float32 ``power``
dispatches to SIMD approximations on CPUs with AVX-512 and is then an ulp off on one input in five, so
learning rates compared bit for bit against Caffe's drift with the CPU. The C library's own ``powf`` is called
where it can be loaded; elsewhere float64 ``pow`` rounded once to float32 (glibc's ``powf`` is not always
correctly rounded: the two differ on about one input in two thousand, by one ulp).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache

from .lazy_numpy import np


@cache
def _libm_powf() -> Callable[[float, float], float] | None:
    """The C library's ``powf``, or None where no C maths library can be loaded."""
    for name in ("libm.so.6", "libSystem.dylib", ctypes.util.find_library("m")):
        try:
            fn = ctypes.CDLL(name).powf if name else None
        except (OSError, AttributeError):
            continue
        if fn is not None:
            fn.restype = ctypes.c_float
            fn.argtypes = [ctypes.c_float, ctypes.c_float]
            return fn
    return None


def powf(base: float, exponent: float) -> np.float32:
    """C's ``powf`` of two float32 values, with its inf and NaN (no warnings)."""
    b, e = np.float32(base), np.float32(exponent)
    fn = _libm_powf()
    if fn is not None:
        return np.float32(fn(b, e))
    with np.errstate(all="ignore"):
        return np.float32(np.power(np.float64(b), np.float64(e)))
