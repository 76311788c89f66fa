"""Imports every built-in reader module so that it registers itself (explicitly, no swallowed import errors)."""

from __future__ import annotations

from . import hdf5  # noqa: F401  (HDF5Data)
