"""pycaffe's phases: ``caffe.TRAIN`` and ``caffe.TEST``, and the ``phase`` a Python layer is given.

BVLC master exports Caffe's ``Phase`` as a boost.python enum (``str(caffe.TEST)`` is ``'TEST'``, and it equals
1). caffe-fast-rcnn, py-faster-rcnn's Caffe, gave Python layers that enum as ``self.phase``, and its layers read
their configuration as ``cfg[str(self.phase)]``; master's ``PythonLayer`` sets a plain int. An int whose ``str``
is its name serves both: ``self.phase == caffe.TRAIN`` holds, and ``str(self.phase)`` is ``'TRAIN'``.
"""

from __future__ import annotations


class Phase(int):
    """``caffe.TRAIN`` (0) or ``caffe.TEST`` (1), printed by name."""

    def __str__(self) -> str:
        return "TRAIN" if self == 0 else "TEST"

    __repr__ = __str__


TRAIN, TEST = Phase(0), Phase(1)
