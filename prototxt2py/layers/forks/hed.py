"""HED (s9xie/hed): ImageLabelmapData, images and edge maps ``(N, 1, H, W)`` from a list of file pairs read
with ``image_data_param``; a net input.

Written as a third-party plugin: public plugin API only (it subclasses the public built-in ImageData spec).
"""

from __future__ import annotations

from prototxt2py.layers import register
from prototxt2py.layers.data import ImageData

FAMILY = "forks"


@register
class ImageLabelmapData(ImageData):
    type = "ImageLabelmapData"
    family = FAMILY
    summary = "HED: images and edge maps (N, 1, H, W) from a list of file pairs (image_data_param); a net input"

    def label_shape(self, a):
        return (a.batch, 1, a.height, a.width)
