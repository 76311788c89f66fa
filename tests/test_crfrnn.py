"""CRF-RNN's MultiStageMeanfield against a line-by-line port of the fork's CPU code (torrvision/caffe ``crfrnn``:
``modified_permutohedral.cpp``'s SSE build, with its hash table of lattice keys and its splat / blur / slice, and
``meanfield_iteration.cpp``'s forward and backward passes, gemm by gemm), forward and gradients; its initial blobs;
the CRF-RNN deploy net of the corpus; bad settings as one line."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import CORPUS, generated_module

import prototxt2py
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.layers.forks.crfrnn_nn import _Lattice
from prototxt2py.reader import read_net_text

F32 = np.float32
CRF_DEPLOY = CORPUS / "BVLC__caffe@e3ba6ef/examples/crfasrnn_segmentation/TVG_CRFRNN_new_deploy.prototxt"


# -- the fork's lattice, point by point --------------------------------------------------------------------------
class RefLattice:
    """``ModifiedPermutohedral::init_cpu`` (SSE build) and ``sseCompute``, with a dict for its hash table."""

    def __init__(self, features: np.ndarray) -> None:
        n, d = features.shape
        self.n, self.d = n, d
        inv_std = F32(math.sqrt(2.0 / 3.0) * (d + 1))
        scale = [F32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)]
        canonical = [[i if j <= d - i else i - (d + 1) for j in range(d + 1)] for i in range(d + 1)]
        table: dict[tuple[int, ...], int] = {}
        self.offset = np.zeros((n, d + 1), np.int64)
        self.bary = np.zeros((n, d + 1), F32)
        down, up = F32(1.0 / (d + 1)), F32(d + 1)
        for k in range(n):
            f = features[k]
            elevated = [F32(0)] * (d + 1)
            sm = F32(0)
            for j in range(d, 0, -1):
                cf = F32(f[j - 1] * scale[j - 1])
                elevated[j] = F32(sm - F32(F32(j) * cf))
                sm = F32(sm + cf)
            elevated[0] = sm
            rem0, total = [], F32(0)
            for i in range(d + 1):
                v = F32(np.round(F32(down * elevated[i])))  # nearest, ties to even
                rem0.append(F32(v * up))
                total = F32(total + v)
            rank = [0] * (d + 1)
            for i in range(d):
                di = F32(elevated[i] - rem0[i])
                for j in range(i + 1, d + 1):
                    if di < F32(elevated[j] - rem0[j]):
                        rank[i] += 1
                    else:
                        rank[j] += 1
            for i in range(d + 1):
                rank[i] += int(total)
                if rank[i] < 0:
                    rank[i] += d + 1
                    rem0[i] = F32(rem0[i] + up)
                elif rank[i] >= d + 1:
                    rank[i] -= d + 1
                    rem0[i] = F32(rem0[i] - up)
            bary = [F32(0)] * (d + 2)
            for i in range(d + 1):
                v = F32(F32(elevated[i] - rem0[i]) * down)
                bary[d - rank[i]] = F32(bary[d - rank[i]] + v)
                bary[d - rank[i] + 1] = F32(bary[d - rank[i] + 1] - v)
            bary[0] = F32(bary[0] + F32(1 + bary[d + 1]))
            for r in range(d + 1):
                key = tuple(int(rem0[i]) + canonical[r][rank[i]] for i in range(d))
                self.offset[k, r] = table.setdefault(key, len(table))
                self.bary[k, r] = bary[r]
        self.m = len(table)
        self.neighbours = np.zeros((d + 1, self.m, 2), np.int64)
        for key, i in table.items():
            for j in range(d + 1):
                n1 = [x - 1 for x in key]
                n2 = [x + 1 for x in key]
                if j < d:
                    n1[j], n2[j] = key[j] + d, key[j] - d
                self.neighbours[j, i] = (table.get(tuple(n1), -1), table.get(tuple(n2), -1))

    def compute(self, values: np.ndarray, reverse: bool = False) -> np.ndarray:
        """``values`` (C, N) -> (C, N): splat, blur (directions reversed for the backward pass), slice."""
        c, d = values.shape[0], self.d
        table = np.zeros((self.m + 2, c), F32)
        for i in range(self.n):
            for j in range(d + 1):
                o = self.offset[i, j] + 1
                table[o] = table[o] + F32(self.bary[i, j]) * values[:, i]
        for j in (range(d, -1, -1) if reverse else range(d + 1)):
            new = table.copy()
            for i in range(self.m):
                n1, n2 = self.neighbours[j, i] + 1
                new[i + 1] = table[i + 1] + F32(0.5) * (table[n1] + table[n2])
            table = new
        alpha = F32(1.0 / (1 + 2.0 ** -d))
        out = np.zeros((c, self.n), F32)
        for i in range(self.n):
            acc = np.zeros(c, F32)
            for j in range(d + 1):
                acc = acc + F32(self.bary[i, j] * alpha) * table[self.offset[i, j] + 1]
            out[:, i] = acc
        return out


def _features(h: int, w: int, image: np.ndarray | None, theta_pos: float, theta_rgb: float) -> np.ndarray:
    p = np.arange(h * w)
    cols = [(p % w).astype(F32) / F32(theta_pos), (p // w).astype(F32) / F32(theta_pos)]
    if image is not None:
        cols += [image[c].reshape(-1).astype(F32) / F32(theta_rgb) for c in range(3)]
    return np.stack(cols, axis=1).astype(F32)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(F32)


def meanfield_reference(unary, q0, image, blobs, iterations, alpha, beta, gamma, top_diff):
    """MultiStageMeanfieldLayer::Forward_cpu / Backward_cpu over (C, H*W) arrays: the output and the diffs of
    unary, q0 and the three blobs."""
    c, h, w = unary.shape
    spatial = RefLattice(_features(h, w, None, gamma, 0.0))
    bilateral = RefLattice(_features(h, w, image, alpha, beta))
    norms = [F32(1.0) / (lat.compute(np.ones((1, h * w), F32))[0] + F32(1e-20)) for lat in (spatial, bilateral)]
    ws, wb, compat = blobs
    u = unary.reshape(c, -1)
    x, saved = q0.reshape(c, -1), []
    for _ in range(iterations):
        prob = _softmax(x)
        s = spatial.compute(prob) * norms[0]
        b = bilateral.compute(prob) * norms[1]
        message = (wb @ b + ws @ s).astype(F32)
        x = (u - compat @ message).astype(F32)
        saved.append((prob, s, b, message))
    g = top_diff.reshape(c, -1)
    d_unary = np.zeros_like(u)
    d_blobs = [np.zeros_like(ws), np.zeros_like(wb), np.zeros_like(compat)]
    for prob, s, b, message in reversed(saved):
        d_unary += g
        d_pair = -g
        d_blobs[2] += d_pair @ message.T
        d_message = compat.T @ d_pair
        d_blobs[0] += d_message @ s.T
        d_blobs[1] += d_message @ b.T
        d_s = (ws.T @ d_message) * norms[0]
        d_b = (wb.T @ d_message) * norms[1]
        d_prob = spatial.compute(d_s, reverse=True) + bilateral.compute(d_b, reverse=True)
        g = prob * (d_prob - (d_prob * prob).sum(axis=0, keepdims=True))
    return x.reshape(unary.shape), d_unary.reshape(unary.shape), g.reshape(unary.shape), d_blobs


# -- tests ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_lattice_matches_the_forks_cpu_code(seed: int) -> None:
    """Spatial (2-d) and bilateral (5-d) lattices of a small image: same vertices and weights per point (up to
    the vertices' numbering), and the same filtered values forward and with the directions reversed."""
    rng = np.random.default_rng(seed)
    h, w = 6, 7
    image = rng.normal(0, 40, (3, h, w)).astype(F32)
    for feats in (_features(h, w, None, 1.5, 0.0), _features(h, w, image, 3.0, 13.0)):
        ref = RefLattice(feats)
        got = _Lattice(torch.from_numpy(feats), torch.device("cpu"))
        assert got.size == ref.m
        np.testing.assert_array_equal(got.weights.numpy(), ref.bary)
        # the same partition of points' vertices, whatever the numbering
        pairs = set(zip(got.offsets.numpy().reshape(-1).tolist(), (ref.offset + 1).reshape(-1).tolist(), strict=True))
        assert len(pairs) == ref.m
        values = rng.normal(0, 1, (4, h * w)).astype(F32)
        np.testing.assert_allclose(got.filter(torch.from_numpy(values)).numpy(), ref.compute(values),
                                   rtol=1e-5, atol=1e-6)
        # the transpose (autograd) equals the fork's reversed pass
        v = torch.from_numpy(values).requires_grad_()
        seed_diff = rng.normal(0, 1, (4, h * w)).astype(F32)
        got.filter(v).backward(torch.from_numpy(seed_diff))
        np.testing.assert_allclose(v.grad.numpy(), ref.compute(seed_diff, reverse=True), rtol=1e-5, atol=1e-6)


def test_keys_too_spread_for_one_integer_give_the_same_lattice() -> None:
    """Image values of +-60000 (keys spread beyond an int64 code): the lattice compares keys whole."""
    rng = np.random.default_rng(3)
    feats = _features(3, 4, rng.choice([-60000.0, 0.0, 60000.0], (3, 3, 4)).astype(F32), 2.0, 1.0)
    ref = RefLattice(feats)
    got = _Lattice(torch.from_numpy(feats), torch.device("cpu"))
    values = rng.normal(0, 1, (2, 12)).astype(F32)
    np.testing.assert_allclose(got.filter(torch.from_numpy(values)).numpy(), ref.compute(values), rtol=1e-5,
                               atol=1e-6)


def _crf_net(c: int, h: int, w: int, spatial: str = "", iterations: int = 3, batch: int = 1) -> prototxt2py.CaffeNet:
    spatial = spatial or " ".join(str(3 + i) for i in range(c))
    text = textwrap.dedent(f"""
    layer {{ name: "in" type: "Input" top: "unary" top: "q0" top: "data" input_param {{
      shape {{ dim: {batch} dim: {c} dim: {h} dim: {w} }} shape {{ dim: {batch} dim: {c} dim: {h} dim: {w} }}
      shape {{ dim: {batch} dim: 3 dim: {h} dim: {w} }} }} }}
    layer {{ name: "inference1" type: "MultiStageMeanfield" bottom: "unary" bottom: "q0" bottom: "data" top: "pred"
      multi_stage_meanfield_param {{ num_iterations: {iterations} compatibility_mode: POTTS threshold: 2 theta_alpha: 3
        theta_beta: 13 theta_gamma: 1.5 spatial_filter_weights_str: "{spatial}" bilateral_filter_weights_str: "5 5 5"
      }} }}
    """)
    return prototxt2py.load(read_net_text(text), phase="TRAIN")


def test_initial_blobs_are_the_forks() -> None:
    """The kernel weights' diagonals from the strings, the compatibility -I (POTTS)."""
    net = _crf_net(3, 4, 5)
    layer = net.layer("inference1")
    torch.testing.assert_close(layer.spatial_weight.detach().reshape(3, 3), torch.diag(torch.tensor([3.0, 4, 5])))
    torch.testing.assert_close(layer.bilateral_weight.detach().reshape(3, 3), 5 * torch.eye(3))
    torch.testing.assert_close(layer.compatibility.detach().reshape(3, 3), -torch.eye(3))


def test_meanfield_forward_and_backward_follow_the_forks_code() -> None:
    """Three iterations on a 5x6 image with random (not diagonal) blobs: the output, and the gradients of the
    unaries, Q0 and the three blobs for a seeded top diff, against the port of Forward_cpu / Backward_cpu."""
    rng = np.random.default_rng(5)
    c, h, w = 3, 5, 6
    net = _crf_net(c, h, w)
    layer = net.layer("inference1")
    blobs = [rng.normal(0, 1, (c, c)).astype(F32) for _ in range(3)]
    with torch.no_grad():
        for p, value in zip((layer.spatial_weight, layer.bilateral_weight, layer.compatibility), blobs, strict=True):
            p.copy_(torch.from_numpy(value).reshape(1, 1, c, c))
    unary = rng.normal(0, 2, (c, h, w)).astype(F32)
    q0 = rng.normal(0, 2, (c, h, w)).astype(F32)
    image = rng.normal(0, 40, (3, h, w)).astype(F32)
    top_diff = rng.normal(0, 1, (c, h, w)).astype(F32)
    want, d_unary, d_q0, d_blobs = meanfield_reference(unary, q0, image, blobs, 3, 3.0, 13.0, 1.5, top_diff)
    ut = torch.from_numpy(unary)[None].requires_grad_()
    qt = torch.from_numpy(q0)[None].requires_grad_()
    out = net(unary=ut, q0=qt, data=torch.from_numpy(image)[None])["pred"]
    np.testing.assert_allclose(out.detach().numpy()[0], want, rtol=1e-5, atol=1e-5)
    out.backward(torch.from_numpy(top_diff)[None])
    np.testing.assert_allclose(ut.grad.numpy()[0], d_unary, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(qt.grad.numpy()[0], d_q0, rtol=1e-4, atol=1e-5)
    for p, want_diff in zip((layer.spatial_weight, layer.bilateral_weight, layer.compatibility), d_blobs,
                            strict=True):
        np.testing.assert_allclose(p.grad.numpy().reshape(c, c), want_diff, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(generated_module(net)(ut.detach(), qt.detach(), torch.from_numpy(image)[None]),
                               out.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("settings, message", [
    ({"batch": 2}, "MultiStageMeanfield takes one image per pass (the fork's code), got a batch of 2"),
    ({"spatial": "3 3"}, "spatial_filter_weights_str has 2 values for 3 classes"),
    ({"spatial": "3 x 3"}, "spatial_filter_weights_str must be numbers separated by spaces, got '3 x 3'"),
    ({"iterations": 1}, "num_iterations must be greater than 1, got 1"),
])
def test_bad_settings_are_one_line(settings: dict, message: str) -> None:
    with pytest.raises(Prototxt2pyError) as e:
        _crf_net(3, 4, 5, **settings)
    assert message in str(e.value) and "'inference1'" in str(e.value) and "\n" not in str(e.value)


def test_an_image_too_big_for_the_lattice_is_one_line() -> None:
    """A 7000 x 7000 image: the lattice's keys would take 11 GiB; refused before anything is built."""
    with pytest.raises(Prototxt2pyError) as e:
        _crf_net(2, 7000, 7000, spatial="3 3")
    message = str(e.value)
    assert "MultiStageMeanfield's bilateral lattice would need 11.0 GiB, over the 8.0 GiB limit" in message
    assert "'inference1'" in message and "\n" not in message


@pytest.mark.skipif(not CRF_DEPLOY.is_file(), reason="needs the shared corpus")
def test_crf_rnn_deploy_net_runs(tmp_path: Path) -> None:
    """The corpus's TVG_CRFRNN_new_deploy.prototxt (a GitHub page footer pasted after its last layer, cut here):
    FCN-8s scores refined by ten mean-field iterations, at 96x96 with its fillers; the CRF moves the scores."""
    text = CRF_DEPLOY.read_text().split("Contact GitHub")[0]
    (tmp_path / "crf.prototxt").write_text(text)
    net = prototxt2py.load(str(tmp_path / "crf.prototxt"), input_shapes={"data": (1, 3, 96, 96)})
    torch.manual_seed(0)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 96, 96) * 50, all_blobs=True)
    assert out["pred"].shape == (1, 21, 96, 96) and torch.isfinite(out["pred"]).all()
    assert not torch.equal(out["pred"], out["unary"])
