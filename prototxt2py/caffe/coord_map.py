"""``caffe.coord_map``: how layers map spatial coordinates, to crop one NetSpec top to another (FCN's ``crop``).

A map is ``(axis, scale, shift)``: output coordinate ``i * scale`` corresponds to input coordinate ``i``, moved by
``shift``; pointwise layers are ``(None, 1, 0)``. Maps compose along the graph; :func:`crop` finds the common
ancestor of two tops and returns the ``Crop`` layer aligning them. Same rules and exceptions as pycaffe.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .net_spec import Function, Top
from .net_spec import layers as L

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold"]

Map = tuple[Any, Any, Any]


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(axis, stride, effective kernel extent, pad) of a Convolution/Deconvolution/Im2col/Pooling spec (from
    ``convolution_param`` or the layer's own keyword arguments); legacy ``_h``/``_w`` fields are refused."""
    params = fn.params.get("convolution_param", fn.params)
    axis = params.get("axis", 1)
    ks = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    assert len({"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(fn.params)) == 0, \
        "cropping does not support legacy _h/_w params"
    return (axis, np.array(params.get("stride", 1), ndmin=1), (ks - 1) * dilation + 1,
            np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """(axis, offset) of a Crop spec, with Caffe's defaults (axis 2, offset 0)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


class UndefinedMapException(Exception):
    """The layer type has no coordinate mapping."""


class AxisMismatchException(Exception):
    """Two maps act on different axes."""


def coord_map(fn: Function) -> Map:
    """The (axis, scale, shift) map of one layer spec."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # -1: the last non-coordinate axis
    raise UndefinedMapException


def compose(base_map: Map, next_map: Map) -> Map:
    """Scales multiply; the further shift is scaled by the base scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map: Map) -> Map:
    """The backward mapping: de-scale and un-shift."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _bottoms(top: Top) -> tuple:
    """Inputs to walk through: all of them, except a Crop's reference input (only its first maps)."""
    return top.fn.inputs[:1] if top.fn.type_name == "Crop" else top.fn.inputs


def coord_map_from_to(top_from: Top, top_to: Top) -> Map:
    """The map from ``top_from`` to ``top_to``, composed back to their first common ancestor."""
    from_maps = {top_from: (None, 1, 0)}
    frontier = {top_from}
    while frontier:
        top = frontier.pop()
        try:
            for bottom in _bottoms(top):
                from_maps[bottom] = compose(from_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            pass
    to_maps = {top_to: (None, 1, 0)}
    frontier = {top_to}
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            for bottom in _bottoms(top):
                to_maps[bottom] = compose(to_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            continue
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer cropping ``top_from`` to ``top_to``'s coordinates (axis and offsets from the map)."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    assert (a == 1).all(), f"scale mismatch on crop (a = {a})"
    assert (b <= 0).all(), f"cannot crop negative offset (b = {b})"
    assert (np.round(b) == b).all(), f"cannot crop noninteger offset (b = {b})"
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=[int(o) for o in -np.round(b).astype(int)]))
