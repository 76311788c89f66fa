"""The readers of FCN's Python data layers (fcn.berkeleyvision.org ``voc_layers``, ``siftflow_layers``,
``nyud_layers``, ``pascalcontext_layers``; specs in :mod:`prototxt2py.layers.forks.fcn`), reading as those classes
read, value for value:

* the split list is the file's lines (``read().splitlines()``); in a random split (``randomize`` and "train" in
  the split's name) each pass takes ``random.randint(0, n - 1)`` from Python's generator seeded with ``seed``
  (the same draws as the layer's ``random.seed(seed)``), else the ids in order, wrapping around;
* images through Pillow as ``np.array(im, dtype=np.float32)``, channels reversed to BGR, the mean subtracted in
  the layer's precision (a ``param_str`` mean is a float64 array), transposed to ``(C, H, W)``;
* label maps as uint8 with the layers' arithmetic (SIFT Flow's and NYUD's ``label -= 1`` wraps void to 255),
  from PNG palettes (VOC) or MATLAB files (``scipy.io.loadmat``: SBDD's ``GTcls.Segmentation``, SIFT Flow's
  ``S``, NYUD's ``segmentation``, PASCAL-Context's ``LabelMap`` folded to the 59 classes by name).

Each top is ``(1, C, H, W)``: one image per pass at its own size. Where the layer would crash or hand the net
something it cannot use (a greyscale image, a label of another size than its image, a missing file), the reader
stops with one line naming the file.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from ..fsutil import open_regular
from . import DataError, DataLayer, register_reader
from ._deps import require
from .seeding import base_seed

#: the layers' own float32 constants besides the image mean
_MEAN_HHA = (132.431, 94.076, 118.477)
_MEAN_LOG_DEPTH = (7.844,)
#: PASCAL-Context: the 59-class names its task list spells differently from the 400-label list
_CONTEXT_RENAMES = (("table", "diningtable"), ("bedclothes", "bedcloth"), ("cloth", "clothes"))
_SIFTFLOW_DIR = "spatial_envelope_256x256_static_8outdoorcategories"


class FcnSegSource:
    """One FCN data layer's passes: :meth:`next_batch` gives the arrays of the current image id and moves on."""

    def __init__(self, layer: DataLayer, seed: int | None = None):
        self.name, self.p = layer.name, layer.param
        self.indices = self._read_list(self.p.source)
        self.rng = random.Random(self.p.seed if self.p.seed is not None else base_seed(seed)) if self.p.random else None
        self.idx = self.rng.randint(0, len(self.indices) - 1) if self.rng is not None else 0
        self.context_labels = self._context_labels() if self.p.dataset == "pascalcontext" else None

    def _fail(self, message: str) -> DataError:
        return DataError(message, layer=self.name)

    def _read_list(self, path: str) -> list[str]:
        try:
            with open_regular(path, "r", encoding="utf-8", errors="surrogateescape") as f:
                ids = f.read().splitlines()
        except OSError as e:
            raise self._fail(f"cannot read the split list '{path}': {e.strerror or e}") from None
        if not ids:
            raise self._fail(f"the split list '{path}' names no image")
        return ids

    # -- order ----------------------------------------------------------------------------------------------------
    def _advance(self) -> None:
        if self.rng is not None:
            self.idx = self.rng.randint(0, len(self.indices) - 1)
        else:
            self.idx = (self.idx + 1) % len(self.indices)

    def skip_batches(self, n: int) -> None:
        for _ in range(n):
            self._advance()

    def next_batch(self) -> list[np.ndarray]:
        idx = self.indices[self.idx]
        # (C, H, W) each: a label or depth map gets its leading axis, as the layers' loaders add it
        arrays = [a if a.ndim == 3 else a[np.newaxis] for a in (self._load(kind, idx) for kind in self.p.outputs)]
        sizes = {a.shape[-2:] for a in arrays}
        if len(sizes) > 1:
            got = ", ".join(f"{kind} {a.shape[-2]}x{a.shape[-1]}" for kind, a in zip(self.p.outputs, arrays,
                                                                                      strict=True))
            raise self._fail(f"image id '{idx}': its tops differ in size ({got}); the net needs one size per pass")
        self._advance()
        return [a[np.newaxis].astype(np.float32) for a in arrays]

    # -- files ----------------------------------------------------------------------------------------------------
    def _load(self, kind: str, idx: str) -> np.ndarray:
        p, root = self.p, self.p.root
        if p.dataset == "voc":
            return self._image(f"{root}/JPEGImages/{idx}.jpg") if kind == "image" else \
                self._pixels(f"{root}/SegmentationClass/{idx}.png", 2, np.uint8)
        if p.dataset == "sbdd":
            if kind == "image":
                return self._image(f"{root}/img/{idx}.jpg")
            label = self._mat(f"{root}/cls/{idx}.mat", "GTcls", lambda m: m["GTcls"][0]["Segmentation"][0])
            return label.astype(np.uint8)
        if p.dataset == "siftflow":
            if kind == "image":
                return self._image(f"{root}/Images/{_SIFTFLOW_DIR}/{idx}.jpg")
            folder = "SemanticLabels" if kind == "semantic" else "GeoLabels"
            label = self._mat(f"{root}/{folder}/{_SIFTFLOW_DIR}/{idx}.mat", "S", lambda m: m["S"])
            if kind == "geometric":
                label[label == -1] = 0
            label = label.astype(np.uint8)
            label -= 1  # classes from 0, void (0) wraps to 255
            return label
        if p.dataset == "nyud":
            return self._nyud(kind, idx)
        if kind == "image":
            return self._image(f"{root}/JPEGImages/{idx}.jpg")
        return self._context_label(f"{p.context_dir}/trainval/{idx}.mat")

    def _nyud(self, kind: str, idx: str) -> np.ndarray:
        root = self.p.root
        if kind == "color":
            return self._image(f"{root}/data/images/img_{idx}.png")
        if kind == "hha":
            return self._image(f"{root}/data/hha/img_{idx}.png", bgr=False, mean=_MEAN_HHA)
        if kind == "depth":
            d = self._pixels(f"{root}/data/depth/img_{idx}.png", 2)
            with np.errstate(divide="ignore", invalid="ignore"):  # a zero depth is log 0 = -inf, as in the layer
                d = np.log(d)
            d -= np.array(_MEAN_LOG_DEPTH, dtype=np.float32)
            return d
        label = self._mat(f"{root}/segmentation/img_{idx}.mat", "segmentation", lambda m: m["segmentation"])
        label = label.astype(np.uint8)
        label -= 1  # classes 0-39, void wraps to 255
        return label

    def _pixels(self, path: str, ndim: int, dtype: Any = np.float32) -> np.ndarray:
        """``np.array(Image.open(path), dtype=dtype)``, which must have ``ndim`` axes."""
        image_mod = require("PIL.Image", f"reading {path}", self.name)
        try:
            with open_regular(path) as f, image_mod.open(f) as im:
                mode = im.mode
                arr = np.array(im, dtype=dtype)
        except OSError as e:
            raise self._fail(f"cannot read '{path}': {getattr(e, 'strerror', None) or e}") from None
        except Exception as e:  # Pillow raises many types for corrupt or hostile files (decompression bombs)
            raise self._fail(f"cannot decode '{path}': {e}") from None
        if arr.ndim != ndim or (ndim == 3 and arr.shape[2] != 3):
            want = "3 colour channels" if ndim == 3 else "one channel"
            raise self._fail(f"'{path}' is a {mode} image of shape {arr.shape}; the layer needs {want}")
        return arr

    def _image(self, path: str, bgr: bool = True, mean: tuple[float, ...] | None = None) -> np.ndarray:
        in_ = self._pixels(path, 3)
        if bgr:
            in_ = in_[:, :, ::-1]
        m = np.array(mean or self.p.mean, dtype=np.float64 if mean is None and self.p.mean_float64 else np.float32)
        if m.shape[0] not in (1, 3):
            raise self._fail(f"the mean has {m.shape[0]} values for the 3 channels of '{path}'")
        in_ -= m  # float32 minus a float64 mean computes in float64, as the layer's in-place subtraction does
        return in_.transpose((2, 0, 1))

    def _mat(self, path: str, name: str, pick: Any) -> np.ndarray:
        """The array ``pick(loadmat(path))`` (variable ``name`` only), 2-D."""
        sio = require("scipy.io", f"reading {path}", self.name)
        try:
            with open_regular(path) as f:
                mat = sio.loadmat(f, variable_names=[name])
        except OSError as e:
            raise self._fail(f"cannot read '{path}': {getattr(e, 'strerror', None) or e}") from None
        except Exception as e:  # scipy's reader on a corrupt, truncated or v7.3 (HDF5) file
            raise self._fail(f"cannot read MATLAB file '{path}': {type(e).__name__}: {e}") from None
        try:
            value = np.asarray(pick(mat))
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise self._fail(f"'{path}' holds no label map where FCN reads it ({name}): {e!r}") from None
        if value.ndim != 2 or value.dtype.kind not in "biuf":
            raise self._fail(f"'{path}': {name} is {value.dtype} of shape {value.shape}, expected a 2-D label map")
        return value

    def _context_labels(self) -> list[tuple[int, int]]:
        """PASCAL-Context's fold: (label in the 400-label map, its class among the 59), in the layer's order."""
        all_labels = self._label_names(f"{self.p.context_dir}/labels.txt")
        task = self._label_names(f"{self.p.context_dir}/59_labels.txt")
        for main, spelled in _CONTEXT_RENAMES:
            if spelled not in task:
                raise self._fail(f"'{self.p.context_dir}/59_labels.txt' has no class '{spelled}'")
            task[task.index(spelled)] = main
        folds = []
        for i, name in enumerate(task):
            if name not in all_labels:
                raise self._fail(f"class '{name}' of 59_labels.txt is not in '{self.p.context_dir}/labels.txt'")
            folds.append((all_labels.index(name) + 1, i + 1))
        return folds

    def _label_names(self, path: str) -> list[str]:
        """The names of a ``<number>: <name>`` list, spaces removed (as the layer reads it)."""
        try:
            with open_regular(path, "r", encoding="utf-8", errors="surrogateescape") as f:
                lines = [line for line in f.read().splitlines() if line.strip()]
        except OSError as e:
            raise self._fail(f"cannot read '{path}': {e.strerror or e}") from None
        names = []
        for number, line in enumerate(lines, 1):
            fields = line.split(":")
            if len(fields) != 2:
                raise self._fail(f"{path}:{number}: expected '<number>: <name>', got {line[:80]!r}")
            names.append(fields[1].replace(" ", ""))
        return names

    def _context_label(self, path: str) -> np.ndarray:
        label_400 = self._mat(path, "LabelMap", lambda m: m["LabelMap"])
        label = np.zeros_like(label_400, dtype=np.uint8)
        for label_400_id, class_id in self.context_labels or ():
            label[label_400 == label_400_id] = class_id
        return label


for _name in ("voc_layers.VOCSegDataLayer", "voc_layers.SBDDSegDataLayer", "siftflow_layers.SIFTFlowSegDataLayer",
              "nyud_layers.NYUDSegDataLayer", "pascalcontext_layers.PASCALContextSegDataLayer"):
    register_reader(_name)(FcnSegSource)
