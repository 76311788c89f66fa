"""Imports every built-in reader module so that it registers itself (explicitly, no swallowed import errors)."""

from __future__ import annotations

import prototxt2py.data.annotated_data  # noqa: F401  (AnnotatedData)
import prototxt2py.data.db_data  # noqa: F401  (Data)
import prototxt2py.data.dummy_data  # noqa: F401  (DummyData)
import prototxt2py.data.fcn_data  # noqa: F401  (FCN's Python data layers)
import prototxt2py.data.hdf5  # noqa: F401  (HDF5Data)
import prototxt2py.data.image_data  # noqa: F401  (ImageData)
import prototxt2py.data.label_map_data  # noqa: F401  (SegNet's DenseImageData, HED's ImageLabelmapData)
import prototxt2py.data.memory_data  # noqa: F401  (MemoryData)
import prototxt2py.data.roi_data  # noqa: F401  (py-faster-rcnn's RoIDataLayer)
import prototxt2py.data.window_data  # noqa: F401  (WindowData)
