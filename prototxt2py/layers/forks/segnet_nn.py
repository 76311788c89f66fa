"""SegNet's max-unpooling Upsample as a torch module (alexgkendall/caffe-segnet)."""

import torch
from torch import nn


class _SegNetUnpoolFn(torch.autograd.Function):
    """SegNet's unpooling: top = 0, then ``top[mask[i]] = x[i]`` in increasing i (a later hit
    overwrites); backward gives every bottom element ``top_diff[mask[i]]`` (Caffe's gather)."""

    @staticmethod
    def forward(ctx, x, mask, out_h: int, out_w: int):
        n, c, h, w = x.shape
        idx = mask.reshape(
            n, c, h * w
        ).long()  # float -> int truncates, as static_cast<int>
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= out_h * out_w):
            raise ValueError(
                f"Upsample mask index out of range for a {out_h}x{out_w} top: check that the "
                "scale matches the pooling layer that made the mask"
            )
        pos = torch.arange(h * w, device=x.device).expand(n, c, h * w)
        winner = torch.full(
            (n, c, out_h * out_w), -1, dtype=torch.long, device=x.device
        )
        winner = winner.scatter_reduce(2, idx, pos, reduce="amax")
        flat = x.reshape(n, c, h * w)
        picked = flat.gather(2, winner.clamp(min=0))
        top = torch.where(winner >= 0, picked, torch.zeros((), dtype=x.dtype))
        ctx.save_for_backward(idx)
        ctx.in_shape = x.shape
        return top.view(n, c, out_h, out_w)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        n, c = idx.shape[:2]
        return (
            grad.reshape(n, c, -1).gather(2, idx).view(ctx.in_shape),
            None,
            None,
            None,
        )


class SegNetUpsample(nn.Module):
    """SegNet's Upsample: with a mask (bottom 1) max-unpooling to ``upsample_h`` x ``upsample_w`` (0:
    ``in * scale - pad_out``); without one (YOLO ports) a nearest repeat by the integer scales."""

    def __init__(
        self,
        scale_h: int = 2,
        scale_w: int = 2,
        upsample_h: int = 0,
        upsample_w: int = 0,
        pad_out_h: bool = False,
        pad_out_w: bool = False,
    ) -> None:
        super().__init__()
        self.scale_h, self.scale_w = scale_h, scale_w
        self.upsample_h, self.upsample_w = upsample_h, upsample_w
        self.pad_out_h, self.pad_out_w = pad_out_h, pad_out_w

    def forward(self, x: torch.Tensor, *mask: torch.Tensor) -> torch.Tensor:
        if not mask:
            x = x.repeat_interleave(self.scale_h, dim=2)
            return x.repeat_interleave(self.scale_w, dim=3)
        if self.upsample_h:
            h, w = self.upsample_h, self.upsample_w
        else:
            h = x.shape[2] * self.scale_h - int(self.pad_out_h)
            w = x.shape[3] * self.scale_w - int(self.pad_out_w)
        return _SegNetUnpoolFn.apply(x, mask[0], h, w)
