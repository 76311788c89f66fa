"""Shared helpers of the data-reader tests: layers from prototxt text, the golden datasets folder."""

from __future__ import annotations

from golden import GOLDEN

from prototxt2py.data import DataLayer
from prototxt2py.data.layers import data_layers
from prototxt2py.reader import read_net_text

DATASETS = GOLDEN / "data" / "datasets"


def layer_from(text: str, phase: str = "TEST", rank: int = 0, world: int = 1) -> DataLayer:
    """The one data layer of a net written as prototxt text."""
    (layer,) = data_layers(read_net_text(text).net, phase, rank, world)
    return layer


def data_net(source: str, batch: int = 4, transform: str = "", backend: str = "LMDB", extra: str = "") -> str:
    return f"""
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ {transform} }}
  data_param {{ source: "{source}" batch_size: {batch} backend: {backend} {extra} }} }}"""


def image_net(source: str, root: str = "", batch: int = 4, extra: str = "", transform: str = "") -> str:
    return f"""
layer {{ name: "images" type: "ImageData" top: "data" top: "label"
  transform_param {{ {transform} }}
  image_data_param {{ source: "{source}" root_folder: "{root}" batch_size: {batch} {extra} }} }}"""
