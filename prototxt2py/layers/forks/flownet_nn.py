"""Torch helpers of FlowNet2's fork (lmb-freiburg/flownet2): Correlation, ChannelNorm, FlowWarp, Accum,
Resample and the mean subtraction of DataAugmentation, computing what the fork's CUDA kernels compute (the fork
has no CPU code for most of them)."""

import torch
import torch.nn.functional as F
from torch import nn


def _round_away(v: torch.Tensor) -> torch.Tensor:
    """CUDA's ``round``: halves away from zero (``torch.round`` rounds them to even)."""
    whole = torch.trunc(v)
    step = torch.where((v - whole).abs() >= 0.5, torch.sign(v), torch.zeros_like(v))
    return whole + step


class Correlation(nn.Module):
    """FlowNet's correlation: for every displacement ``(dy, dx)`` of the ``(2 r + 1)^2`` grid (``r =
    max_displacement // stride_2``, steps of ``stride_2``, ``dy`` the outer loop of the channel index), the dot
    product over channels and a ``kernel_size`` square of the zero-padded first bottom with the second shifted
    by the displacement, at every ``stride_1``-th position whose neighbourhood fits, divided by ``kernel_size^2
    * channels``. With ``x_steps`` (Correlation1D) the displacements are horizontal only, those multiples of
    ``stride_2``, and neither the padding nor the border applies vertically."""

    def __init__(
        self,
        pad: int,
        kernel_size: int,
        max_displacement: int,
        stride1: int,
        stride2: int,
        x_steps: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.pad, self.kernel_size = pad, kernel_size
        self.max_displacement, self.stride1, self.stride2 = (
            max_displacement,
            stride1,
            stride2,
        )
        self.x_steps = x_steps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        p, k, md, s1, s2 = (
            self.pad,
            self.kernel_size,
            self.max_displacement,
            self.stride1,
            self.stride2,
        )
        r = md // s2
        if self.x_steps is None:
            pads, top, ys, xs = (p, p, p, p), md, range(-r, r + 1), range(-r, r + 1)
        else:
            pads, top, ys, xs = (p, p, 0, 0), 0, range(1), self.x_steps
        if p:
            a, b = F.pad(a, pads), F.pad(b, pads)
        th = -(-(a.shape[2] - 2 * (top + (k - 1) // 2)) // s1)
        tw = -(-(a.shape[3] - 2 * (md + (k - 1) // 2)) // s1)
        span_h, span_w = (th - 1) * s1 + k, (tw - 1) * s1 + k
        first = a[:, :, top : top + span_h, md : md + span_w]
        if k == 1:
            first = first[:, :, ::s1, ::s1]
        outs = []
        for dy in ys:
            for dx in xs:
                y0, x0 = top + dy * s2, md + dx * s2
                second = b[:, :, y0 : y0 + span_h, x0 : x0 + span_w]
                if k == 1:
                    outs.append((first * second[:, :, ::s1, ::s1]).sum(1, keepdim=True))
                else:
                    prod = (first * second).sum(1, keepdim=True)
                    outs.append(F.avg_pool2d(prod, k, stride=s1, divisor_override=1))
        return torch.cat(outs, 1) / float(k * k * a.shape[1])


class ChannelNorm(nn.Module):
    """FlowNet2's ChannelNorm: the L2 norm over channels, ``(N, 1, H, W)``. Its gradient is the fork's,
    ``top_diff * x / (norm + 1e-9)``: zero, not NaN, where the norm is zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = (x * x).sum(1, keepdim=True).sqrt()
        if not (torch.is_grad_enabled() and x.requires_grad):
            return norm
        direction = (x / (norm + 1e-9)).detach()
        linear = (x * direction).sum(1, keepdim=True)
        return norm.detach() + (linear - linear.detach())


def _gather(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``flat (N, C, P)`` read at the per-image positions ``index (N, Q)`` for every channel: ``(N, C, Q)``."""
    return flat.gather(2, index.unsqueeze(1).expand(-1, flat.shape[1], -1))


class FlowWarp(nn.Module):
    """FlowNet2's FlowWarp: ``image`` sampled bilinearly at ``(x + flow_x, y + flow_y)``; the right and bottom
    neighbours clamped to the last column and row; positions outside ``[0, W) x [0, H)`` get 0, or NaN with
    ``fill_value: NOT_A_NUMBER``. Its gradients are the fork's (the derivative of the bilinear weights)."""

    def __init__(self, fill_nan: bool = False) -> None:
        super().__init__()
        self.fill_nan = fill_nan

    def forward(self, image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        n, c, h, w = image.shape
        xs = torch.arange(w, dtype=flow.dtype, device=flow.device)
        ys = torch.arange(h, dtype=flow.dtype, device=flow.device).unsqueeze(1)
        x2, y2 = xs + flow[:, 0], ys + flow[:, 1]
        inside = (x2 >= 0) & (y2 >= 0) & (x2 < w) & (y2 < h)
        x2 = torch.where(inside, x2, torch.zeros_like(x2))
        y2 = torch.where(inside, y2, torch.zeros_like(y2))
        left, top = x2.detach().floor(), y2.detach().floor()
        alpha, beta = (x2 - left).unsqueeze(1), (y2 - top).unsqueeze(1)
        left, top = left.long(), top.long()
        right, bottom = (left + 1).clamp(max=w - 1), (top + 1).clamp(max=h - 1)
        flat = image.reshape(n, c, h * w)
        tl = _gather(flat, (top * w + left).reshape(n, -1)).reshape(n, c, h, w)
        tr = _gather(flat, (top * w + right).reshape(n, -1)).reshape(n, c, h, w)
        bl = _gather(flat, (bottom * w + left).reshape(n, -1)).reshape(n, c, h, w)
        br = _gather(flat, (bottom * w + right).reshape(n, -1)).reshape(n, c, h, w)
        out = (
            (1 - alpha) * (1 - beta) * tl
            + alpha * (1 - beta) * tr
            + (1 - alpha) * beta * bl
            + alpha * beta * br
        )
        fill = torch.full((), float("nan") if self.fill_nan else 0.0, dtype=out.dtype)
        return torch.where(inside.unsqueeze(1), out, fill.to(out.device))


def _corner_positions(size: int, top: int, device: torch.device) -> torch.Tensor:
    """``i / (top - 1) * (size - 1)`` in float32 for each of ``top`` positions (aligned corners)."""
    i = torch.arange(top, dtype=torch.float32, device=device)
    return i / float(top - 1) * float(size - 1)


class Accum(nn.Module):
    """FlowNet2's Accum: each bottom resized bilinearly (aligned corners) to ``size`` (the layer's rule, applied
    when the net is built), or to the last bottom's size (``have_reference``), and stacked along channels.
    Neighbours are read as the fork reads them, one element further in memory (their weight is 0 at the last row
    and column)."""

    def __init__(
        self, size: tuple[int, int] | None = None, have_reference: bool = False
    ) -> None:
        super().__init__()
        self.size, self.have_reference = size, have_reference

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        if self.have_reference:
            th, tw = bottoms[-1].shape[2], bottoms[-1].shape[3]
            bottoms = bottoms[:-1]
        else:
            th, tw = self.size
        return torch.cat([self._upscale(x, th, tw) for x in bottoms], 1)

    @staticmethod
    def _upscale(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
        n, c, h, w = x.shape
        xpos = _corner_positions(w, tw, x.device)
        ypos = _corner_positions(h, th, x.device).unsqueeze(1)
        left, top = xpos.floor(), ypos.floor()
        xd, yd = xpos - left, ypos - top
        planes = torch.arange(n * c, device=x.device).reshape(n, c, 1, 1) * (h * w)
        tl_index = planes + (top.long() * w + left.long())
        last = x.numel() - 1
        flat = x.reshape(-1)
        tl = flat[tl_index]
        tr = flat[(tl_index + 1).clamp(max=last)]
        bl = flat[(tl_index + w).clamp(max=last)]
        br = flat[(tl_index + 1 + w).clamp(max=last)]
        return (
            (1 - xd) * (1 - yd) * tl
            + xd * yd * br
            + (1 - xd) * yd * bl
            + xd * (1 - yd) * tr
        )


def _filter(kind: str, d: torch.Tensor) -> torch.Tensor:
    """The fork's interpolation kernels: triangle (LINEAR) and Keys' bicubic with ``a = -0.5`` (CUBIC)."""
    if kind == "LINEAR":
        return (1 - d.abs()).clamp(min=0)
    x = d.abs()
    near = x * x * (1.5 * x - 2.5) + 1.0
    far = x * (x * (-0.5 * x + 2.5) - 4.0) + 2.0
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_positions(
    size_out: int, own: float, other: float, device: torch.device
) -> torch.Tensor:
    """The fork's source coordinate of each output position: ``i * f + g / 2 - 0.5`` in float32, where ``f``
    is this axis's scale and ``g`` the other axis's (the kernel mixes them up; equal for uniform scaling)."""
    i = torch.arange(size_out, dtype=torch.float32, device=device)
    f = torch.tensor(own, dtype=torch.float32, device=device)
    g = torch.tensor(other, dtype=torch.float32, device=device)
    return i * f + g / 2.0 - 0.5


class Resample(nn.Module):
    """FlowNet2's Resample to ``size`` (or to the second bottom's height and width): NEAREST, or LINEAR /
    CUBIC as a normalised weighted sum over the taps around each source position, widened by the scale when
    downsampling with ``antialias``. The 2-D weights are separable, so the sum is two matrix products."""

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        kind: str = "LINEAR",
        antialias: bool = True,
    ) -> None:
        super().__init__()
        self.size, self.kind, self.antialias = size, kind, antialias

    def forward(
        self, x: torch.Tensor, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        n, c, h, w = x.shape
        th, tw = self.size if reference is None else tuple(reference.shape[2:])
        fx = float(
            torch.tensor(w, dtype=torch.float32) / torch.tensor(tw, dtype=torch.float32)
        )
        fy = float(
            torch.tensor(h, dtype=torch.float32) / torch.tensor(th, dtype=torch.float32)
        )
        xpos = resample_positions(tw, fx, fy, x.device)
        ypos = resample_positions(th, fy, fx, x.device)
        if self.kind == "NEAREST":
            rows, cols = _round_away(ypos).long(), _round_away(xpos).long()
            return x[:, :, rows][:, :, :, cols]
        antialias = self.antialias and (fx > 1 or fy > 1)
        width = 4 if self.kind == "CUBIC" else 2
        mx = self._weights(xpos, w, fx, antialias, width, x.dtype)
        my = self._weights(ypos, h, fy, antialias, width, x.dtype)
        out = my @ (x @ mx.t())
        total = my.sum(1).unsqueeze(1) * mx.sum(1)
        safe = torch.where(total == 0, torch.ones_like(total), total)
        return torch.where(total == 0, torch.zeros_like(out), out / safe)

    def _weights(
        self,
        pos: torch.Tensor,
        size_in: int,
        scale: float,
        antialias: bool,
        width: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """``(len(pos), size_in)``: each output position's tap weights ``a * k(a * d)`` (``a = 1 / scale`` with
        antialiasing, else 1) over the taps within the fork's radius that lie inside the input."""
        a = float(torch.tensor(1.0) / torch.tensor(scale if antialias else 1.0))
        radius = (
            2
            if scale < 1
            else int(torch.ceil(torch.tensor(float(width)) / torch.tensor(a)))
        )
        centre = _round_away(pos).long().unsqueeze(1)
        taps = centre + torch.arange(-radius, radius + 1, device=pos.device)
        inside = (taps >= 0) & (taps < size_in)
        d = pos.unsqueeze(1) - taps.float()
        weight = a * _filter(self.kind, a * d)
        weight = torch.where(inside, weight, torch.zeros_like(weight))
        out = torch.zeros(pos.shape[0], size_in, dtype=weight.dtype, device=pos.device)
        out.scatter_add_(1, taps.clamp(0, size_in - 1), weight)  # taps outside add 0
        return out.to(dtype)


class DataAugmentation(nn.Module):
    """FlowNet2's DataAugmentation without cropping (how its deploy nets use it): the input less a mean.
    ``iteration`` counts passes; over the first ``recompute_mean`` passes ``mean`` (per pixel, ``(1, C, H, W)``)
    is the running average of the inputs and ``channel_mean`` (``(1, C, 1, 1)``) its average over pixels;
    trained weights hold both, past that count. The mean subtracted is per pixel or per channel
    (``mean_per_pixel``), or the ``mean`` values of the prototxt (``fixed``) when nothing is recomputed."""

    def __init__(
        self,
        channels: int,
        recompute_mean: int = 0,
        mean_per_pixel: bool = True,
        fixed: tuple[float, ...] | None = None,
        size: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        self.recompute_mean, self.mean_per_pixel, self.fixed = (
            recompute_mean,
            mean_per_pixel,
            fixed,
        )
        self.register_buffer("iteration", torch.zeros(1, 1, 1, 1))
        if recompute_mean:
            self.register_buffer("mean", torch.zeros(1, channels, *size))
            self.register_buffer("channel_mean", torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.iteration += 1
            if self.recompute_mean:
                self._update(x.detach())
        if self.recompute_mean:
            return x - (self.mean if self.mean_per_pixel else self.channel_mean)
        if self.fixed is not None and not self.mean_per_pixel:
            fixed = torch.tensor(self.fixed, dtype=x.dtype, device=x.device)
            return x - fixed.reshape(1, -1, 1, 1)
        return x

    def _update(self, x: torch.Tensor) -> None:
        """The fork's running average while ``iteration <= recompute_mean``: ``mean * (i - 1)``, plus each
        image / N, divided by ``i``; ``channel_mean`` the mean's sum over pixels times ``1 / area``."""
        i = self.iteration
        total = self.mean * (i - 1)
        for image in x.unbind(0):
            total = total + image.unsqueeze(0) * (1.0 / x.shape[0])
        updated = total * (1.0 / i)
        area = x.shape[2] * x.shape[3]
        per_channel = updated.sum((2, 3), keepdim=True) * (1.0 / area)
        keep = i > self.recompute_mean
        self.mean.copy_(torch.where(keep, self.mean, updated))
        self.channel_mean.copy_(torch.where(keep, self.channel_mean, per_channel))
