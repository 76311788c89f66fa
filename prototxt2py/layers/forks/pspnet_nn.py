"""PSPNet's Interp as a torch module (hszhao/PSPNet)."""

import torch
import torch.nn.functional as F
from torch import nn


class Interp(nn.Module):
    """PSPNet's Interp: crop by ``-pad_beg``/``-pad_end`` (pads are <= 0), then bilinear resize with
    aligned corners (torch's ``align_corners=True`` is the layer's float32 source coordinate) to ``size``,
    or to the cropped size shrunk ``(s - 1) // shrink_factor + 1`` then zoomed ``s + (s - 1)(zoom - 1)``.
    """

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        zoom_factor: int = 1,
        shrink_factor: int = 1,
        pad_beg: int = 0,
        pad_end: int = 0,
    ) -> None:
        super().__init__()
        self.size, self.zoom_factor, self.shrink_factor = (
            size,
            zoom_factor,
            shrink_factor,
        )
        self.pad_beg, self.pad_end = pad_beg, pad_end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_eff = x.shape[2] + self.pad_beg + self.pad_end
        w_eff = x.shape[3] + self.pad_beg + self.pad_end
        if self.size is not None:
            h, w = self.size
        else:
            s, z = self.shrink_factor, self.zoom_factor
            h, w = (h_eff - 1) // s + 1, (w_eff - 1) // s + 1
            h, w = h + (h - 1) * (z - 1), w + (w - 1) * (z - 1)
        b = -self.pad_beg
        x = x[:, :, b : b + h_eff, b : b + w_eff]
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
