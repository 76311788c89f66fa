"""Errors of training: bad solver definitions, solver states that do not fit, diverging losses."""

from __future__ import annotations

from ..errors import Prototxt2pyError


class SolverError(Prototxt2pyError):
    """A solver definition Caffe would refuse, or a solver state that does not fit the net."""


class DivergedError(Prototxt2pyError):
    """The loss became NaN or infinite; training stopped (after a snapshot)."""
