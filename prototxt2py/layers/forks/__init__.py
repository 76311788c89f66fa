"""Layers of Caffe forks found in published nets, one plugin module per fork.

Each module is written exactly as a third party writes a plugin (see docs/plugins.md): it imports only the
public plugin API (:mod:`prototxt2py.layers`, and the built-in spec classes it extends), registers its specs
with ``@register``, and keeps its torch helper classes in its own ``*_nn`` module, named by ``Call`` targets
``"prototxt2py.layers.forks.<fork>_nn:<Class>"`` (imported only when the runtime builds a module; copied into
generated code like built-in helpers). The built-in forks are therefore also the plugin API's test.

* :mod:`.ssd` -- SSD (weiliu89/caffe ``ssd``): Permute, PriorBox, DetectionOutput, MultiBoxLoss, AnnotatedData
* :mod:`.pspnet` -- PSPNet / DeepLab: Interp
* :mod:`.segnet` -- SegNet (alexgkendall/caffe-segnet): Upsample, DenseImageData
* :mod:`.bn` -- the ``BN`` type of SegNet and PSPNet (one type name, two layouts)
* :mod:`.rcnn` -- Faster R-CNN / R-FCN: ROIPooling, PSROIPooling, SmoothL1Loss
* :mod:`.rfcn` -- R-FCN: its OHEM layers (SoftmaxWithLossOHEM, SmoothL1LossOHEM, BoxAnnotatorOHEM), py-R-FCN's
  training settings of py-faster-rcnn's Python layers
* :mod:`.mobile` -- MobileNet / ShuffleNet ports: ConvolutionDepthwise, ShuffleChannel
* :mod:`.senet` -- SENet ports: Axpy
* :mod:`.hed` -- HED (s9xie/hed): ImageLabelmapData
* :mod:`.crfrnn` -- CRF-RNN (torrvision/caffe ``crfrnn``): MultiStageMeanfield
* :mod:`.flownet` -- FlowNet 2.0 (lmb-freiburg/flownet2): Correlation, ChannelNorm, FlowWarp, Accum, Resample,
  DataAugmentation (deploy nets)
* :mod:`.yolo` -- YOLOv2/v3 (eric612/MobileNet-YOLO): Yolov3DetectionOutput, YoloDetectionOutput
* :mod:`.fcn` -- FCN (shelhamer/fcn.berkeleyvision.org): its Python data layers (VOC, SBDD, SIFT Flow, NYUD,
  PASCAL-Context)
"""

from __future__ import annotations

from . import bn, crfrnn, fcn, flownet, hed, mobile, pspnet, rcnn, rfcn, segnet, senet, ssd, yolo

__all__ = [
    "bn", "crfrnn", "fcn", "flownet", "hed", "mobile", "pspnet", "rcnn", "rfcn", "segnet", "senet", "ssd", "yolo",
]
