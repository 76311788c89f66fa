"""The forks' ``BN`` type: SegNet's (alexgkendall/caffe-segnet: ``scale``/``shift`` blobs, ``bn_mode``) and
PSPNet's (hszhao/PSPNet: + ``mean``/``variance``, ``frozen``, ``eps``), told apart by their fields.

Written as a third-party plugin: public plugin API only, the torch helpers in :mod:`.bn_nn`; it declares
itself a per-channel affine step so the runtime's inference plan folds it into a preceding convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from prototxt2py.layers import ChannelAffine, Filler, LayerSpec, call, count, plain, register

from ...lazy_numpy import np

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.bn_nn"


_PSPNET_BN_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")


@dataclass(frozen=True)
class BNAttrs:
    pspnet: bool  # PSPNet's 4-blob layer; else SegNet's 2-blob layer
    learn: bool  # SegNet bn_mode LEARN (batch statistics in every phase)
    frozen: bool  # PSPNet: stored statistics, no parameter gradients
    momentum: float
    eps: float
    scale_filler: Filler | None
    shift_filler: Filler | None


@register
class BN(LayerSpec):
    type = "BN"
    backward_reads = "forward"  # its Backward_cpu works from private copies its forward saved
    tops = (1, 3)
    family = FAMILY
    blob_names = ("scale", "shift", "mean", "variance")
    summary = "fork batch norm: SegNet (scale, shift; bn_mode) or PSPNet (+ mean, variance; frozen, eps)"

    def attrs(self, layer):
        p = plain(layer.bn_param)
        pspnet = any(p.has(f) for f in _PSPNET_BN_FIELDS) or len(layer.param) in (3, 4)
        learn = not pspnet and p.bn_mode == "LEARN"
        if len(layer.top) > (3 if learn else 1):
            raise ValueError("only SegNet's BN in LEARN mode has extra tops (batch mean and variance)")

        def given(name: str) -> Filler | None:
            return getattr(p, name) if p.has(name) else None

        return BNAttrs(pspnet, learn, p.frozen, p.momentum, p.eps,
                       given("slope_filler" if pspnet else "scale_filler"),
                       given("bias_filler" if pspnet else "shift_filler"))

    def infer_shapes(self, node, in_shapes):
        x = in_shapes[0]
        if len(x) < 2:
            raise self.fail(node, f"BN needs a channel axis, got {tuple(x)}")
        stat = (1, x[1], 1, 1)
        return [tuple(x), stat, stat][: len(node.tops)]

    def param_shapes(self, node, in_shapes):
        stat = (1, in_shapes[0][1], 1, 1)
        return [stat] * (4 if node.attrs.pspnet else 2)

    def macs(self, node, in_shapes, out_shapes):
        return 2 * count(in_shapes[0])

    def module(self, node):
        a: BNAttrs = node.attrs
        channels = node.param_shapes[0][1]
        if a.pspnet:
            given = {"frozen": a.frozen or None, "momentum": a.momentum, "eps": a.eps}
            return call(f"{NN}:PSPNetBN", channels, **{k: v for k, v in given.items() if v is not None})
        given = {"learn": a.learn or None, "num_tops": len(node.tops) if len(node.tops) > 1 else None}
        return call(f"{NN}:SegNetBN", channels, **{k: v for k, v in given.items() if v is not None})

    def per_channel_affine(self, node):
        """SegNet's INFERENCE mode is ``x * scale + shift`` as it stands; PSPNet's form (stored statistics:
        eval mode or frozen) comes from ``PSPNetBN.affine``. SegNet's LEARN mode normalises with batch
        statistics in every phase: not affine."""
        a: BNAttrs = node.attrs
        if len(node.tops) != 1 or a.learn:
            return None
        if a.pspnet:
            return ChannelAffine(method="affine", active="uses_global_stats", depends_on=("eps",), alone=True)
        return ChannelAffine(multiplier="scale", offset="shift")

    def fillers(self, node):
        """scale, shift by the layer's fillers; PSPNet's variance starts at 1 when frozen (else 0)."""
        a: BNAttrs = node.attrs
        stats = [None, Filler(type="constant", value=1.0) if a.frozen else None]
        return [a.scale_filler, a.shift_filler, *(stats if a.pspnet else [])]

    def to_onnx(self, node, ctx):
        """SegNet's ``x * scale + shift`` (INFERENCE) or its LEARN mode, which normalises with the batch's
        statistics in every phase (``E[x^2] - E[x]^2``, ``+ 1e-9``, its extra tops the mean and variance); PSPNet's
        stored statistics (TEST or frozen) as ``(x - mean) * (var + eps)^-0.5 * scale + shift``, the inverse std
        computed in float32 as Caffe. PSPNet's TRAIN form updates its statistics: not exported."""
        a: BNAttrs = node.attrs
        if a.pspnet and ctx.training and not a.frozen:
            ctx.unsupported("BN normalising with batch statistics and updating its own (PSPNet TRAIN unfrozen)")
        rank = len(ctx.in_shape(0))

        def per_channel(array: np.ndarray, hint: str) -> str:
            return ctx.broadcast_const(array.reshape(-1), 1, rank, hint)

        x = ctx.input(0)
        if a.learn:
            if len(node.tops) > 1 and rank != 4:
                ctx.unsupported("BN's statistics tops of a blob without 4 axes")
            axes = [0, *range(2, rank)]
            mean = ctx.reduce("ReduceMean", x, axes)
            var = ctx.add("Sub", [ctx.reduce("ReduceMean", ctx.add("Mul", [x, x]), axes), ctx.add("Mul", [mean, mean])])
            std = ctx.add("Sqrt", [ctx.add("Add", [var, ctx.scalar(1e-9)])])
            x = ctx.add("Div", [ctx.add("Sub", [x, mean]), std])
            for i, stat in enumerate((mean, var)[: len(node.tops) - 1], 1):
                ctx.add("Identity", [stat], ctx.output(i))
        if a.pspnet:
            var = ctx.param(3).astype(np.float32)
            inv_std = np.power(var + np.float32(a.eps), np.float32(-0.5), dtype=np.float32)
            x = ctx.add("Sub", [x, per_channel(ctx.param(2), "mean")])
            x = ctx.add("Mul", [x, per_channel(inv_std, "inv_std")])
        x = ctx.add("Mul", [x, per_channel(ctx.param(0), "scale")])
        ctx.add("Add", [x, per_channel(ctx.param(1), "shift")], ctx.output(0))
