"""Imports every built-in reader module so that it registers itself (explicitly, no swallowed import errors)."""

from __future__ import annotations

from . import db_data  # noqa: F401  (Data)
from . import dummy_data  # noqa: F401  (DummyData)
from . import image_data  # noqa: F401  (ImageData)
from . import memory_data  # noqa: F401  (MemoryData)
from . import window_data  # noqa: F401  (WindowData)
