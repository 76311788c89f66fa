"""FCN (shelhamer/fcn.berkeleyvision.org): the ``Python`` data layers its nets read their datasets with, built in,
so that FCN's own ``train.prototxt``/``val.prototxt`` and ``solve.py`` run as written, with no user code imported.

``voc_layers.VOCSegDataLayer``, ``voc_layers.SBDDSegDataLayer``, ``siftflow_layers.SIFTFlowSegDataLayer``,
``nyud_layers.NYUDSegDataLayer`` and ``pascalcontext_layers.PASCALContextSegDataLayer`` each hand the net one image
and its label map per pass, at the image's own size (the net reshapes to it): tops ``(1, C, H, W)``. The settings
are the layer's ``param_str``, a Python dict literal the layers ``eval``; here it is read as literals only. What
each file holds and how it is loaded is in the reader, :mod:`prototxt2py.data.fcn_data`. A caller's own mapping
of one of these names (``python_layers={...}``) still wins over the built-in one.

Shapes are known only from the data (each image its own size): the net is built from the first image, as Caffe's
set-up does it, and graph-only commands ask for ``--input`` as for other data layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prototxt2py.layers import PythonDataLayerSpec, PythonParamAttrs, Unknowable, python_settings, register
from prototxt2py.layers.data import PYTHON_HINT, input_hint

if TYPE_CHECKING:  # pragma: no cover
    pass

FAMILY = "forks"


@dataclass(frozen=True)
class FcnDataParam:
    """What an FCN data layer reads, as plain values (what the reader is opened with)."""

    dataset: str  # "voc", "sbdd", "siftflow", "nyud" or "pascalcontext"
    root: str  # the directory the image paths start from (``voc_dir``, ``sbdd_dir``, ...)
    split: str
    source: str  # the split's list of image ids, one per line
    outputs: tuple[str, ...]  # what each top holds: "image", "label", NYUD's "color"/"depth"/"hha"/"label", ...
    mean: tuple[float, ...]  # subtracted from the BGR image (the param_str's, else the layer's own constants)
    mean_float64: bool  # a param_str mean is a float64 array, the layers' own constants are float32
    random: bool  # random order: ``randomize`` (default true) and a split whose name contains "train"
    seed: int | None  # ``random.seed`` of the draws; None: the layer seeds from the clock, here from the net's seed
    context_dir: str = ""  # PASCAL-Context's label directory


@dataclass(frozen=True)
class FcnDataAttrs(PythonParamAttrs):
    """An FCN data layer: its ``python_param`` and what its ``param_str`` says."""

    param: FcnDataParam
    transform: Any = None  # (no transform_param: the layer subtracts its mean itself)


class _FcnSegData(PythonDataLayerSpec):
    """The settings every FCN data layer shares: a dataset directory (``root_key``), ``split``, ``randomize``,
    ``seed``; subclasses say where the split list is and what the tops hold."""

    family = FAMILY
    dataset = ""
    root_key = ""
    #: a fixed mean (the layer's own constants), or None where ``param_str`` must give one
    fixed_mean: tuple[float, ...] | None = None

    def outputs(self, given: dict) -> tuple[str, ...]:
        return ("image", "label")

    def source(self, root: str, split: str) -> str:
        return f"{root}/{split}.txt"

    def root(self, given: dict) -> str:
        return given[self.root_key]

    def attrs(self, layer):
        fields, given = python_settings(layer, f"FCN's {self.python_layer}", self.root_key)
        for key in ("split", *(("mean",) if self.fixed_mean is None else ())):
            if key not in given:
                raise ValueError(f"python_param.param_str needs '{key}' (FCN's {self.python_layer} reads it)")
        root, split = self.root(given), given["split"]
        for key, value in ((self.root_key, root), ("split", split), ("context_dir", given.get("context_dir", ""))):
            if not isinstance(value, str):
                raise ValueError(f"python_param.param_str: '{key}' must be a string, got {value!r}")
        mean = self.fixed_mean if self.fixed_mean is not None else _mean(given["mean"])
        seed = given.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"python_param.param_str: 'seed' must be an integer or None, got {seed!r}")
        randomize = given.get("randomize", True)
        param = FcnDataParam(
            dataset=self.dataset,
            root=root,
            split=split,
            source=self.source(root, split),
            outputs=self.outputs(given),
            mean=mean,
            mean_float64=self.fixed_mean is None,
            random=bool(randomize) and "train" in split,  # the layers make any other split deterministic
            seed=seed,
            context_dir=given.get("context_dir", ""),
        )
        if len(param.outputs) != len(layer.top):
            raise ValueError(f"FCN's {self.python_layer} gives {len(param.outputs)} tops "
                             f"({', '.join(param.outputs)}), the layer has {len(layer.top)}")
        return FcnDataAttrs(**fields, param=param)

    def infer_shapes(self, node, in_shapes):
        p: FcnDataParam = node.attrs.param
        shapes = [(1, _CHANNELS.get(kind, 3), None, None) for kind in p.outputs]
        hints = " ".join(f"--input {t}={input_hint(s)}" for t, s in zip(node.tops, shapes, strict=True))
        raise Unknowable(f"layer reads {p.source} (FCN {p.dataset} split), image size unknown without the data (each "
                         f"image its own); give {hints}{PYTHON_HINT}")


#: channels of each kind of top (the others are BGR images)
_CHANNELS = {"label": 1, "semantic": 1, "geometric": 1, "depth": 1}


def _mean(value: Any) -> tuple[float, ...]:
    if (not isinstance(value, list | tuple) or not 0 < len(value) <= 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"python_param.param_str: 'mean' must be a tuple of 1 to 4 numbers, got {value!r}")
    return tuple(float(v) for v in value)


@register
class VOCSegDataLayer(_FcnSegData):
    python_layer = "voc_layers.VOCSegDataLayer"
    tops = (2, 2)
    dataset, root_key = "voc", "voc_dir"
    summary = ("FCN's PASCAL VOC reader: JPEGImages/<id>.jpg and SegmentationClass/<id>.png of "
               "ImageSets/Segmentation/<split>.txt, one image per pass; a net input")

    def source(self, root, split):
        return f"{root}/ImageSets/Segmentation/{split}.txt"


@register
class SBDDSegDataLayer(_FcnSegData):
    python_layer = "voc_layers.SBDDSegDataLayer"
    tops = (2, 2)
    dataset, root_key = "sbdd", "sbdd_dir"
    summary = "FCN's SBDD reader: img/<id>.jpg and cls/<id>.mat (GTcls) of <split>.txt, one image per pass; a net input"


@register
class SIFTFlowSegDataLayer(_FcnSegData):
    python_layer = "siftflow_layers.SIFTFlowSegDataLayer"
    tops = (3, 3)
    dataset, root_key = "siftflow", "siftflow_dir"
    fixed_mean = (114.578, 115.294, 108.353)
    summary = ("FCN's SIFT Flow reader: an image, its semantic and its geometric labels (.mat) per pass; a net "
               "input")

    def outputs(self, given):
        return ("image", "semantic", "geometric")


@register
class NYUDSegDataLayer(_FcnSegData):
    python_layer = "nyud_layers.NYUDSegDataLayer"
    tops = (1, 4)
    dataset, root_key = "nyud", "nyud_dir"
    fixed_mean = (116.190, 97.203, 92.318)
    summary = "FCN's NYUDv2 reader: the tops param_str 'tops' names (color, depth, hha, label) per pass; a net input"

    def outputs(self, given):
        kinds = given.get("tops")
        if (not isinstance(kinds, list | tuple) or not kinds
                or not all(k in ("color", "depth", "hha", "label") for k in kinds)):
            raise ValueError("python_param.param_str needs 'tops', a list of 'color', 'depth', 'hha' and 'label' "
                             f"(FCN's {self.python_layer} reads it), got {kinds!r}")
        return tuple(kinds)


@register
class PASCALContextSegDataLayer(_FcnSegData):
    python_layer = "pascalcontext_layers.PASCALContextSegDataLayer"
    tops = (2, 2)
    dataset, root_key = "pascalcontext", "voc_dir"
    fixed_mean = (104.007, 116.669, 122.679)
    summary = ("FCN's PASCAL-Context reader: VOC2010 images and trainval/<id>.mat label maps folded to the 59 "
               "classes, one image per pass; a net input")

    def root(self, given):
        if not isinstance(given.get("context_dir"), str):
            raise ValueError(f"python_param.param_str needs 'context_dir', a string (FCN's {self.python_layer} "
                             "reads it)")
        voc = given[self.root_key]
        return f"{voc}/VOC2010" if isinstance(voc, str) else voc

    def source(self, root, split):
        return f"{root}/ImageSets/Main/{split}.txt"
