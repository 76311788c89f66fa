"""Torch helper of CRF-RNN's fork (torrvision/caffe ``crfrnn``): ``MultiStageMeanfield``, mean-field inference of
a dense CRF with Gaussian spatial and bilateral kernels, filtered on a permutohedral lattice as the fork's CPU
code builds it (``modified_permutohedral.cpp``, the SSE build)."""

import math

import torch
from torch import nn


class _Lattice:
    """The permutohedral lattice of ``features`` ``(P, d)`` (float32): each point's ``d + 1`` enclosing
    vertices (``offsets``, 1-based: row 0 of a value table is the zero a missing neighbour reads) and
    barycentric ``weights``, and each vertex's two neighbours along every one of the ``d + 1`` blur directions.
    :meth:`filter` is splat, blur along the directions in order, slice (times the lattice's constant
    ``1 / (1 + 2^-d)``); autograd's backward is its transpose, which the fork computes with the directions
    reversed."""

    def __init__(self, features: torch.Tensor, device: torch.device) -> None:
        f = features.detach().float().cpu()
        points, d = f.shape
        inv_std = float(
            torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32)
        )
        scale = [1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std for i in range(d)]
        scale = torch.tensor(scale, dtype=torch.float32)
        elevated: list[torch.Tensor] = [torch.zeros(points)] * (d + 1)
        total = torch.zeros(points)
        for j in range(
            d, 0, -1
        ):  # y = E p, summed from the last coordinate, in float32 as the SSE loop
            cf = f[:, j - 1] * scale[j - 1]
            elevated[j] = total - float(j) * cf
            total = total + cf
        elevated[0] = total
        down = torch.tensor(1.0 / (d + 1), dtype=torch.float32)
        up = float(d + 1)
        rem0, moved = [], torch.zeros(points)
        for i in range(d + 1):  # the nearest remainder-0 point, rounding half to even
            v = torch.round(down * elevated[i])
            rem0.append(v * up)
            moved = moved + v
        rank = [torch.zeros(points) for _ in range(d + 1)]
        for i in range(d):
            di = elevated[i] - rem0[i]
            for j in range(i + 1, d + 1):
                c = (di < elevated[j] - rem0[j]).float()
                rank[i] = rank[i] + c
                rank[j] = rank[j] + (1 - c)
        for i in range(d + 1):  # back onto the plane
            rank[i] = rank[i] + moved
            shift = torch.where(rank[i] < 0, up, 0.0) - torch.where(
                rank[i] >= up, up, 0.0
            )
            rank[i] = rank[i] + shift
            rem0[i] = rem0[i] + shift
        bary = torch.zeros(points, d + 2)
        for i in range(d + 1):
            v = ((elevated[i] - rem0[i]) * down).unsqueeze(1)
            at = (d - rank[i]).long().unsqueeze(1)
            bary.scatter_add_(1, at, v)
            bary.scatter_add_(1, at + 1, -v)
        bary[:, 0] = bary[:, 0] + (1 + bary[:, d + 1])
        ranks = torch.stack(rank[:d], dim=1).long()
        base = torch.stack(rem0[:d], dim=1).long()
        keys = torch.stack(
            [base + torch.where(ranks <= d - r, r, r - (d + 1)) for r in range(d + 1)],
            dim=1,
        )  # (P, d + 1, d): the vertices
        flat = keys.reshape(-1, d)
        # per blur direction j: the neighbours are key - step and key + step
        steps = torch.ones(d + 1, d, dtype=torch.long)
        steps[torch.arange(d), torch.arange(d)] = -d
        lo = flat.min(0).values - (d + 1)
        span = flat.max(0).values - lo + (d + 2)  # room for every neighbour
        if (
            math.prod(span.tolist()) < 2**62
        ):  # keys as one integer each: sorted codes and binary search
            mult = torch.cumprod(
                torch.cat([torch.ones(1, dtype=torch.long), span[:-1]]), 0
            )
            codes, inverse = torch.unique(
                ((flat - lo) * mult).sum(1), return_inverse=True
            )
            m = len(codes)
            shift = (steps * mult).sum(1)
            probe = torch.stack(
                [codes.unsqueeze(0) - shift[:, None], codes + shift[:, None]], 1
            )
            at = torch.searchsorted(codes, probe).clamp(max=m - 1)
            neighbours = torch.where(codes[at] == probe, at + 1, 0)
        else:  # keys too spread out for one integer: compare them whole
            vertices, inverse = torch.unique(flat, dim=0, return_inverse=True)
            m = len(vertices)
            probe = torch.cat(
                [vertices, *(vertices + sign * st for st in steps for sign in (-1, 1))]
            )
            found, where = torch.unique(probe, dim=0, return_inverse=True)
            index_of = torch.zeros(len(found), dtype=torch.long)  # 0: no such vertex
            index_of[where[:m]] = torch.arange(1, m + 1)
            neighbours = index_of[where[m:]].reshape(d + 1, 2, m)
        self.neighbours = neighbours.to(device)
        self.offsets = (inverse.reshape(points, d + 1) + 1).to(device)
        self.weights = bary[:, : d + 1].contiguous().to(device)
        self.size, self.dims = m, d
        self.alpha = float(torch.tensor(1.0 / (1.0 + 2.0**-d), dtype=torch.float32))

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` ``(C, P)`` filtered with the lattice's Gaussian (its splat, blur and slice)."""
        v = values.t()
        channels = v.shape[1]
        d = self.dims
        splat = (self.weights.unsqueeze(2) * v.unsqueeze(1)).reshape(-1, channels)
        table = torch.zeros(self.size + 1, channels, dtype=v.dtype, device=v.device)
        table = table.index_add(0, self.offsets.reshape(-1), splat)
        zero = table[:1]
        for j in range(d + 1):
            n1, n2 = self.neighbours[j]
            table = torch.cat([zero, table[1:] + 0.5 * (table[n1] + table[n2])])
        weights = self.weights * self.alpha
        out = weights[:, 0:1] * table[self.offsets[:, 0]]
        for j in range(1, d + 1):
            out = out + weights[:, j : j + 1] * table[self.offsets[:, j]]
        return out.t()


class MultiStageMeanfield(nn.Module):
    """CRF-RNN's mean-field layer: bottoms unaries ``U``, the first iteration's input ``Q0`` (both
    ``(1, C, H, W)``) and the image ``(1, 3+, H, W)``. Each of ``num_iterations`` iterations takes the softmax
    ``Q`` of its input over the channels, filters it with the spatial kernel (positions / ``theta_gamma``) and the
    bilateral kernel (positions / ``theta_alpha``, the first three image channels / ``theta_beta``), each
    normalised by its filter of ones (``1 / (n + 1e-20)``), mixes the two with the ``spatial_weight`` and
    ``bilateral_weight`` matrices, applies ``compatibility``, and subtracts that from ``U``. Blobs ``(1, 1, C, C)``;
    the image gets no gradient. One image per pass, as the fork computes."""

    def __init__(
        self,
        channels: int,
        num_iterations: int,
        theta_alpha: float,
        theta_beta: float,
        theta_gamma: float,
    ) -> None:
        super().__init__()
        self.num_iterations = num_iterations
        self.theta_alpha, self.theta_beta = theta_alpha, theta_beta
        self.theta_gamma = theta_gamma
        self.spatial_weight = nn.Parameter(torch.zeros(1, 1, channels, channels))
        self.bilateral_weight = nn.Parameter(torch.zeros(1, 1, channels, channels))
        self.compatibility = nn.Parameter(torch.zeros(1, 1, channels, channels))
        self._spatial: dict = {}  # the spatial lattice of the last size seen (no state: rebuilt on demand)

    def _positions(self, height: int, width: int, theta: float) -> list[torch.Tensor]:
        p = torch.arange(height * width)
        theta32 = torch.tensor(theta, dtype=torch.float32)
        return [(p % width).float() / theta32, (p // width).float() / theta32]

    def forward(
        self, unary: torch.Tensor, q0: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        n, c, h, w = unary.shape
        if n != 1:
            raise ValueError(
                f"MultiStageMeanfield takes one image per pass (the fork's code), got a batch of {n}"
            )
        device = unary.device
        with torch.no_grad():
            key = (h, w, str(device))
            if key not in self._spatial:  # positions only: one lattice per size
                positions = self._positions(h, w, self.theta_gamma)
                self._spatial = {key: _Lattice(torch.stack(positions, dim=1), device)}
            spatial = self._spatial[key]
            rgb = image.detach()[0, :3].reshape(3, -1).float().cpu()
            beta = torch.tensor(self.theta_beta, dtype=torch.float32)
            features = [*self._positions(h, w, self.theta_alpha), *(rgb / beta)]
            bilateral = _Lattice(torch.stack(features, dim=1), device)
            ones = torch.ones(1, h * w, device=device)
            norms = [
                (1.0 / (lat.filter(ones) + 1e-20)).to(unary.dtype)
                for lat in (spatial, bilateral)
            ]
        u = unary.reshape(c, h * w)
        ws, wb = self.spatial_weight.reshape(c, c), self.bilateral_weight.reshape(c, c)
        compat = self.compatibility.reshape(c, c)
        x = q0.reshape(c, h * w)
        for _ in range(self.num_iterations):
            q = torch.softmax(x, dim=0)
            s = spatial.filter(q) * norms[0]
            b = bilateral.filter(q) * norms[1]
            message = wb @ b + ws @ s
            x = u - compat @ message
        return x.reshape(unary.shape)
