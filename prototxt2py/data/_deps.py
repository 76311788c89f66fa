"""Optional dependencies of the readers, imported only when a net needs them.

Inference never touches LMDB, LevelDB or image codecs, so they are an extra (``pip install prototxt2py[train]``);
a reader asks for its module here on first use and the user gets one line naming the extra, not an ImportError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from . import DataError

#: module -> the pip package that provides it
_PACKAGES = {
    "lmdb": "lmdb",
    "plyvel": "plyvel",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "h5py": "h5py",
    "scipy.io": "scipy",
}


def require(module: str, why: str, layer: str | None = None) -> ModuleType:
    """Import ``module`` or raise a :class:`DataError` saying which package (and extra) provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = _PACKAGES.get(module, module)
        hint = "pip install prototxt2py[leveldb]" if module == "plyvel" else "pip install prototxt2py[train]"
        raise DataError(f"{why} needs the Python package '{package}' ({hint})", layer=layer) from None


def optional(module: str) -> ModuleType | None:
    """``module`` if it can be imported, else ``None`` (for readers with a fallback)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
