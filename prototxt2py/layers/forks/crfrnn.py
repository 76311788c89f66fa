"""CRF-RNN (torrvision/caffe ``crfrnn``, the crfasrnn models): ``MultiStageMeanfield``, mean-field inference of
a fully connected CRF over a segmentation net's scores, unrolled as an RNN.

The kernels are filtered on a permutohedral lattice built as the fork's CPU code builds it (the SSE build); the
fork's GPU code builds its lattice differently, so nets trained on GPUs differ in the approximation's last bits.
Blobs (``1, 1, C, C``): the spatial and bilateral kernel weights (initially diagonal, from
``spatial_filter_weights_str`` / ``bilateral_filter_weights_str``, or an older revision's single
``spatial_filter_weight`` / ``bilateral_filter_weight``) and the compatibility matrix (``-1`` on the diagonal,
``compatibility_mode: POTTS``). ``threshold`` is not read by the fork. One image per pass, as the fork computes.

Written as a third-party plugin: public plugin API only; torch helper in :mod:`.crfrnn_nn`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prototxt2py import limits
from prototxt2py.layers import DiagonalFiller, LayerSpec, call, count, plain, register

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.crfrnn_nn"


@dataclass(frozen=True)
class MeanfieldAttrs:
    num_iterations: int
    theta_alpha: float
    theta_beta: float
    theta_gamma: float
    spatial: tuple[float, ...] | float  # the diagonal's values (a string's), or one value for all of it
    bilateral: tuple[float, ...] | float


def _diagonal(p, name: str) -> tuple[float, ...] | float:
    text = getattr(p, f"{name}_filter_weights_str")
    if not text:
        return float(getattr(p, f"{name}_filter_weight"))
    try:
        return tuple(float(v) for v in text.split(" ") if v)
    except ValueError:
        raise ValueError(f"multi_stage_meanfield_param.{name}_filter_weights_str must be numbers separated by "
                         f"spaces, got {text[:40]!r}") from None


@register
class MultiStageMeanfield(LayerSpec):
    type = "MultiStageMeanfield"
    bottoms = (3, 3)
    family = FAMILY
    blob_names = ("spatial_weight", "bilateral_weight", "compatibility")
    summary = ("CRF-RNN mean-field iterations over unaries, Q0 and the image (spatial and bilateral Gaussian "
               "kernels on a permutohedral lattice); one image per pass")

    def attrs(self, layer):
        p = plain(layer.multi_stage_meanfield_param)
        if p.num_iterations <= 1:
            raise ValueError(f"multi_stage_meanfield_param.num_iterations must be greater than 1, got "
                             f"{p.num_iterations}")
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            if not getattr(p, name) > 0:
                raise ValueError(f"multi_stage_meanfield_param.{name} must be positive, got {getattr(p, name)}")
        return MeanfieldAttrs(int(p.num_iterations), float(p.theta_alpha), float(p.theta_beta),
                              float(p.theta_gamma), _diagonal(p, "spatial"), _diagonal(p, "bilateral"))

    def infer_shapes(self, node, in_shapes):
        unary, q0, image = in_shapes
        if len(unary) != 4 or tuple(q0) != tuple(unary):
            raise self.fail(node, f"unaries {tuple(unary)} and Q0 {tuple(q0)} must be the same (N, C, H, W)")
        if unary[0] != 1:
            raise self.fail(node, f"MultiStageMeanfield takes one image per pass (the fork's code), got a batch of "
                                  f"{unary[0]}")
        if len(image) != 4 or image[0] != 1 or image[1] < 3 or count(image, 2) < count(unary, 2):
            raise self.fail(node, f"the image {tuple(image)} needs 3 channels and at least the {unary[2]}x{unary[3]} "
                                  "pixels of the unaries (the fork reads its first H*W values per channel)")
        # the bilateral lattice's vertex keys (6 vertices of 5 int64 coordinates per pixel), built every pass
        limits.check_temporary(count(unary, 2) * 30, "MultiStageMeanfield's bilateral lattice", itemsize=8,
                               layer=node.name, location=node.location)
        for name in ("spatial", "bilateral"):
            given = getattr(node.attrs, name)
            if isinstance(given, tuple) and len(given) < unary[1]:
                raise self.fail(node, f"{name}_filter_weights_str has {len(given)} values for {unary[1]} classes")
        return [tuple(unary)]

    def param_shapes(self, node, in_shapes):
        c = in_shapes[0][1]
        return [(1, 1, c, c)] * 3

    def fillers(self, node):
        a: MeanfieldAttrs = node.attrs
        c = node.param_shapes[0][-1]

        def diagonal(given: tuple[float, ...] | float) -> DiagonalFiller:
            return DiagonalFiller(given[:c] if isinstance(given, tuple) else (given,) * c)

        return [diagonal(a.spatial), diagonal(a.bilateral), DiagonalFiller((-1.0,) * c)]

    def module(self, node):
        a: MeanfieldAttrs = node.attrs
        return call(f"{NN}:MultiStageMeanfield", node.param_shapes[0][-1], a.num_iterations, a.theta_alpha,
                    a.theta_beta, a.theta_gamma)
