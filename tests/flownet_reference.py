"""Float32 numpy ports of the FlowNet2 Caffe fork's (lmb-freiburg/flownet2) layer kernels, written line by line from
correlation_layer.cpp/.cu (CorrelateData, CorrelateDataBackward0/1), resample_layer.cu (InterpolationKernel,
NearestNeighborKernel), flow_warp_layer.cu (flow_warp_kernel_smem, flow_warp_backward_kernel_no_smem),
accum_layer.cpp/.cu (Reshape, UpscaleFeatures), channel_norm_layer.cpp/.cu and data_augmentation_layer.cpp/.cu (the
no-cropping mean path of Forward_gpu); tests/test_flownet.py uses them as the truth that prototxt2py's torch layers are
compared to. They keep the kernels' index formulas, clamping, rounding (CUDA round() is half away from zero, float to
int truncates) and float32 order of operations, quirks included; the CUDA build may contract a*b+c into one fused
multiply-add and accumulates some sums in another order (atomicAdd, cuBLAS), so compare with a tolerance of a few ulps,
not bit for bit. Running this file checks the ports against a few independent facts and numerical gradients.
"""

import math

import numpy as np

F32 = np.float32
_LANES = 32  # WARPS_PER_BLOCK * THREADS_PER_WARP of CorrelateData: one partial sum per thread
_ROUND_OFF = 50000  # the correlation backward kernels' offset for a ceil/floor by integer division
_NAN_FILL = np.array([0xFFE00000], dtype=np.uint32).view(np.float32)[0]  # FlowWarp's NaN fill value (its bits)
_INT_MIN = -(2**31)


def _ftype(*arrays):
    """float64 when any input is float64 (the self-checks' numerical gradients), else the kernels' float32."""
    return np.float64 if any(np.asarray(a).dtype == np.float64 for a in arrays) else np.float32


def _cdiv(a, b):
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _cuda_round(v):
    """CUDA round()/roundf(): to the nearest integer, halves away from zero; as an int."""
    v = float(v)
    a = abs(v)
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1
    return int(r) if v >= 0 else -int(r)


def _device_f2i(v):
    """A float converted to int on the GPU (cvt.rzi.s32.f32): truncation, NaN gives 0, saturation at the int range."""
    v = np.asarray(v, dtype=np.float64)
    out = np.where(np.isnan(v), 0.0, np.clip(np.trunc(np.nan_to_num(v)), _INT_MIN, 2**31 - 1))
    return out.astype(np.int64)


def _host_f2i(v):
    """A float converted to int on x86 (cvttss2si): truncation, NaN/inf/out of range gives INT_MIN."""
    v = float(v)
    if not math.isfinite(v) or not (_INT_MIN <= math.trunc(v) <= 2**31 - 1):
        return _INT_MIN
    return int(math.trunc(v))


# -- Correlation --------------------------------------------------------------------------------------------------


def correlation_geometry(shape, pad, kernel_size, max_displacement, stride1=1, stride2=1):
    """CorrelationLayer::Reshape: (padded_h, padded_w, kernel_radius, top_h, top_w, grid_radius, grid_width)."""
    if kernel_size % 2 == 0:
        raise ValueError("Odd kernel size required")
    _, _, h, w = shape
    ph, pw = h + 2 * pad, w + 2 * pad
    kr = (kernel_size - 1) // 2
    border = max_displacement + kr
    tw = int(math.ceil(F32(pw - border * 2) / F32(stride1)))
    th = int(math.ceil(F32(ph - border * 2) / F32(stride1)))
    if tw < 1 or th < 1:
        raise ValueError("Correlation cannot be done with current settings. Neighborhood and kernel don't fit in blob")
    gr = max_displacement // stride2
    return ph, pw, kr, th, tw, gr, gr * 2 + 1


def _rearrange(b, pad, ft):
    """blob_rearrange_kernel2 into a zeroed buffer: NCHW to N, H+2pad, W+2pad, C with the data in the middle."""
    num, ch, h, w = b.shape
    out = np.zeros((num, h + 2 * pad, w + 2 * pad, ch), ft)
    out[:, pad : pad + h, pad : pad + w, :] = b.transpose(0, 2, 3, 1)
    return out


def correlation(b0, b1, pad, kernel_size, max_displacement, stride1=1, stride2=1):
    """CorrelationLayer::Forward_gpu, correlation_type MULTIPLY (CorrelateData)."""
    ft = _ftype(b0, b1)
    b0 = np.asarray(b0, ft)
    b1 = np.asarray(b1, ft)
    assert b0.shape == b1.shape, "both bottoms must have the same shape"
    num, ch, _, _ = b0.shape
    _, _, _, th, tw, gr, gw = correlation_geometry(b0.shape, pad, kernel_size, max_displacement, stride1, stride2)
    r0 = _rearrange(b0, pad, ft)
    r1 = _rearrange(b1, pad, ft)
    k = kernel_size
    y1 = np.arange(th) * stride1 + max_displacement  # upper-left corner of the patch, padded coordinates
    x1 = np.arange(tw) * stride1 + max_displacement
    sumelems = ft(k * k * ch)
    top = np.zeros((num, gw * gw, th, tw), ft)
    for top_channel in range(gw * gw):
        s2o = (top_channel % gw - gr) * stride2  # x displacement
        s2p = (top_channel // gw - gr) * stride2  # y displacement
        # the 32 threads of a block each sum the channels ch = lane, lane+32, ... over j, i; all blocks at once here
        lanes = np.zeros((num, th, tw, _LANES), ft)
        for j in range(k):
            for i in range(k):
                p0 = r0[:, y1 + j][:, :, x1 + i]
                p1 = r1[:, y1 + s2p + j][:, :, x1 + s2o + i]
                for lo in range(0, ch, _LANES):
                    hi = min(lo + _LANES, ch)
                    lanes[..., : hi - lo] += p0[..., lo:hi] * p1[..., lo:hi]
        total = np.zeros((num, th, tw), ft)
        for idx in range(_LANES):  # thread 0 adds the 32 partial sums in order
            total += lanes[..., idx]
        top[:, top_channel] = total / sumelems
    return top


def correlation_backward(b0, b1, top_diff, pad, kernel_size, max_displacement, stride1=1, stride2=1):
    """CorrelationLayer::Backward_gpu, MULTIPLY: (bottom0 diff, bottom1 diff) by CorrelateDataBackward0/1."""
    ft = _ftype(b0, b1, top_diff)
    b0 = np.asarray(b0, ft)
    b1 = np.asarray(b1, ft)
    assert b0.shape == b1.shape, "both bottoms must have the same shape"
    num, ch, h, w = b0.shape
    ph, pw, kr, th, tw, gr, gw = correlation_geometry(b0.shape, pad, kernel_size, max_displacement, stride1, stride2)
    td = np.asarray(top_diff, ft)
    assert td.shape == (num, gw * gw, th, tw), f"top_diff shape {td.shape}"
    r0 = _rearrange(b0, pad, ft)
    r1 = _rearrange(b1, pad, ft)
    md = max_displacement
    ro = _ROUND_OFF
    ro_s1 = stride1 * ro
    sumelems = ft((kr * 2 + 1) * (kr * 2 + 1) * ch)
    d0 = np.zeros_like(b0)
    d1 = np.zeros_like(b1)

    def read(r, item, yy, xx):
        # only reached when the x/y loops below are not empty; then the tap is always inside the padded blob
        assert 0 <= yy < ph and 0 <= xx < pw, f"padded read ({yy}, {xx}) outside {ph}x{pw}"
        return r[item, yy, xx]

    for item in range(num):
        for m in range(pad, pad + h):  # padded y of the bottom pixel
            for l in range(pad, pad + w):  # padded x
                # Backward0: every channel n at once (same ranges, same order of the sum)
                xmin = _cdiv(l - 2 * kr - md + ro_s1 - 1, stride1) + 1 - ro
                ymin = _cdiv(m - 2 * kr - md + ro_s1 - 1, stride1) + 1 - ro
                xmax = _cdiv(l - md + ro_s1, stride1) - ro
                ymax = _cdiv(m - md + ro_s1, stride1) - ro
                acc = np.zeros(ch, ft)
                if xmax >= 0 and ymax >= 0 and xmin <= tw - 1 and ymin <= th - 1:
                    xmin, xmax = max(0, xmin), min(tw - 1, xmax)
                    ymin, ymax = max(0, ymin), min(th - 1, ymax)
                    for p in range(-gr, gr + 1):
                        for o in range(-gr, gr + 1):
                            s2o = stride2 * o
                            s2p = stride2 * p
                            op = (p + gr) * gw + (o + gr)
                            if ymin > ymax or xmin > xmax:
                                continue  # the kernel reads bottom1 here but never uses it
                            bot1tmp = read(r1, item, m + s2p, l + s2o)
                            for y in range(ymin, ymax + 1):
                                for x in range(xmin, xmax + 1):
                                    acc += td[item, op, y, x] * bot1tmp
                d0[item, :, m - pad, l - pad] = acc / sumelems

                # Backward1: the ranges depend on the displacement
                acc = np.zeros(ch, ft)
                for p in range(-gr, gr + 1):
                    for o in range(-gr, gr + 1):
                        s2o = stride2 * o
                        s2p = stride2 * p
                        xmin = _cdiv(l - 2 * kr - md - s2o + ro_s1 - 1, stride1) + 1 - ro
                        ymin = _cdiv(m - 2 * kr - md - s2p + ro_s1 - 1, stride1) + 1 - ro
                        xmax = _cdiv(l - md - s2o + ro_s1, stride1) - ro
                        ymax = _cdiv(m - md - s2p + ro_s1, stride1) - ro
                        if xmax >= 0 and ymax >= 0 and xmin <= tw - 1 and ymin <= th - 1:
                            xmin, xmax = max(0, xmin), min(tw - 1, xmax)
                            ymin, ymax = max(0, ymin), min(th - 1, ymax)
                            if ymin > ymax or xmin > xmax:
                                continue
                            bot0tmp = read(r0, item, m - s2p, l - s2o)
                            op = (p + gr) * gw + (o + gr)
                            for y in range(ymin, ymax + 1):
                                for x in range(xmin, xmax + 1):
                                    acc += td[item, op, y, x] * bot0tmp
                d1[item, :, m - pad, l - pad] = acc / sumelems
    return d0, d1


# -- Resample -----------------------------------------------------------------------------------------------------


def _bicubic_coeff(x_):
    x = F32(abs(x_))
    if x <= F32(1):
        return x * x * (F32(1.5) * x - F32(2.5)) + F32(1)
    if x < F32(2):
        return x * (x * (F32(-0.5) * x + F32(2.5)) - F32(4)) + F32(2)
    return F32(0)


def _triangle_coeff(x):
    if F32(-1) <= x < F32(0):
        return x + F32(1)
    if F32(0) <= x <= F32(1):
        return F32(1) - x
    return F32(0)


def resample(x, out_h, out_w, rtype="LINEAR", antialias=True):
    """ResampleLayer::Forward_gpu: rtype NEAREST (NearestNeighborKernel) or LINEAR / CUBIC (InterpolationKernel)."""
    x = np.asarray(x, F32)
    num, ch, ih, iw = x.shape
    rtype = str(rtype).upper()
    fx = F32(iw) / F32(out_w)
    fy = F32(ih) / F32(out_h)
    flat = x.reshape(num * ch, ih * iw)  # the kernel's c runs over num*channels
    out = np.empty((num * ch, out_h * out_w), F32)
    half = F32(2)

    def source(x_out, y_out):
        # fx and fy are swapped in the half-pixel terms, as in the kernels
        x_in = F32(x_out) * fx + fy / half - F32(0.5)
        y_in = F32(y_out) * fy + fx / half - F32(0.5)
        return F32(x_in), F32(y_in)

    if rtype == "NEAREST":
        for y_out in range(out_h):
            for x_out in range(out_w):
                x_in, y_in = source(x_out, y_out)
                xr, yr = _cuda_round(x_in), _cuda_round(y_in)
                # the kernel has no bounds check: out of range it reads another pixel or past the blob
                assert 0 <= xr < iw and 0 <= yr < ih, (
                    f"NearestNeighborKernel reads ({yr}, {xr}) outside the {ih}x{iw} input"
                    f" for output ({y_out}, {x_out})"
                )
                out[:, y_out * out_w + x_out] = flat[:, yr * iw + xr]
        return out.reshape(num, ch, out_h, out_w)
    if rtype not in ("LINEAR", "CUBIC"):
        raise ValueError(f"unsupported resample type {rtype}")

    coeff = _bicubic_coeff if rtype == "CUBIC" else _triangle_coeff
    kernel_width = 4 if rtype == "CUBIC" else 2
    is_downsample = bool(fx > 1) or bool(fy > 1)
    aa = is_downsample and bool(antialias)
    ax = F32(1) / (fx if aa else F32(1))
    ay = F32(1) / (fy if aa else F32(1))
    rx = 2 if fx < F32(1) else int(math.ceil(F32(kernel_width) / ax))
    ry = 2 if fy < F32(1) else int(math.ceil(F32(kernel_width) / ay))
    for y_out in range(out_h):
        for x_out in range(out_w):
            x_in, y_in = source(x_out, y_out)
            xr, yr = _cuda_round(x_in), _cuda_round(y_in)
            acc = np.zeros(num * ch, F32)
            wsum = F32(0)
            for yy in range(yr - ry, yr + ry + 1):
                for xx in range(xr - rx, xr + rx + 1):
                    if yy < 0 or xx < 0:
                        continue
                    if yy >= ih or xx >= iw:
                        continue
                    dx = F32(x_in - F32(xx))
                    dy = F32(y_in - F32(yy))
                    wgt = F32(F32(F32(ax * coeff(F32(ax * dx))) * ay) * coeff(F32(ay * dy)))
                    acc += wgt * flat[:, yy * iw + xx]
                    wsum = F32(wsum + wgt)
            out[:, y_out * out_w + x_out] = F32(0) if wsum == 0 else acc / wsum
    return out.reshape(num, ch, out_h, out_w)


# -- FlowWarp -----------------------------------------------------------------------------------------------------


def _warp_corners(x, y, fx_, fy_, width, height, ft):
    """x2, y2, the in-range test and the corner indices / fractions shared by the FlowWarp kernels."""
    x2 = ft(ft(x) + fx_)
    y2 = ft(ft(y) + fy_)
    inside = bool(x2 >= 0) and bool(y2 >= 0) and bool(x2 < width) and bool(y2 < height)
    if not inside:
        return x2, y2, False, None
    ix2_l = int(x2)  # truncation; x2 >= 0 here
    iy2_t = int(y2)
    ix2_r = min(ix2_l + 1, width - 1)
    iy2_b = min(iy2_t + 1, height - 1)
    alpha = ft(x2 - ft(ix2_l))
    beta = ft(y2 - ft(iy2_t))
    return x2, y2, True, (ix2_l, iy2_t, ix2_r, iy2_b, alpha, beta)


def flow_warp(image, flow, fill_nan=False):
    """FlowWarpLayer::Forward_gpu (flow_warp_kernel_smem): bilinear backward warp of image by flow (x, y channels)."""
    ft = _ftype(image, flow)
    img = np.asarray(image, ft)
    fl = np.asarray(flow, ft)
    num, ch, h, w = img.shape
    assert fl.shape == (num, 2, h, w), f"flow shape {fl.shape}"
    fill = ft(_NAN_FILL) if fill_nan else ft(0)
    one = ft(1)
    top = np.empty_like(img)
    for n in range(num):
        for y in range(h):
            for x in range(w):
                _, _, inside, corners = _warp_corners(x, y, fl[n, 0, y, x], fl[n, 1, y, x], w, h, ft)
                if not inside:
                    top[n, :, y, x] = fill
                    continue
                il, it, ir, ib, alpha, beta = corners
                c_tl = (one - alpha) * (one - beta)
                c_tr = alpha * (one - beta)
                c_bl = (one - alpha) * beta
                c_br = alpha * beta
                top[n, :, y, x] = (
                    c_tl * img[n, :, it, il]
                    + c_tr * img[n, :, it, ir]
                    + c_bl * img[n, :, ib, il]
                    + c_br * img[n, :, ib, ir]
                )
    return top


def flow_warp_backward(image, flow, top_diff):
    """FlowWarpLayer::Backward_gpu (flow_warp_backward_kernel_no_smem): (image diff, flow diff), both zeroed first."""
    ft = _ftype(image, flow, top_diff)
    img = np.asarray(image, ft)
    fl = np.asarray(flow, ft)
    td = np.asarray(top_diff, ft)
    num, ch, h, w = img.shape
    assert fl.shape == (num, 2, h, w), f"flow shape {fl.shape}"
    assert td.shape == img.shape, f"top_diff shape {td.shape}"
    one = ft(1)
    image_diff = np.zeros_like(img)  # cudaMemset 0 before the kernel
    flow_diff = np.zeros_like(fl)
    for n in range(num):
        for y in range(h):
            for x in range(w):
                x2, y2, inside, corners = _warp_corners(x, y, fl[n, 0, y, x], fl[n, 1, y, x], w, h, ft)
                if not inside:
                    continue
                il, it, ir, ib, alpha, beta = corners
                wd = td[n, :, y, x]
                # atomicAdd, in this order for each channel (the GPU's order across threads is not fixed)
                image_diff[n, :, it, il] += wd * (one - alpha) * (one - beta)
                image_diff[n, :, it, ir] += wd * alpha * (one - beta)
                image_diff[n, :, ib, il] += wd * (one - alpha) * beta
                image_diff[n, :, ib, ir] += wd * alpha * beta

                gamma = ft(ft(ib) - y2)
                bot_diff = ft(0)
                for c in range(ch):
                    temp = ft(0)
                    temp = ft(temp + gamma * (img[n, c, it, ir] - img[n, c, it, il]))
                    temp = ft(temp + (one - gamma) * (img[n, c, ib, ir] - img[n, c, ib, il]))
                    bot_diff = ft(bot_diff + td[n, c, y, x] * temp)
                flow_diff[n, 0, y, x] = bot_diff

                gamma = ft(ft(ir) - x2)
                bot_diff = ft(0)
                for c in range(ch):
                    temp = ft(0)
                    temp = ft(temp + gamma * (img[n, c, ib, il] - img[n, c, it, il]))
                    temp = ft(temp + (one - gamma) * (img[n, c, ib, ir] - img[n, c, it, ir]))
                    bot_diff = ft(bot_diff + td[n, c, y, x] * temp)
                flow_diff[n, 1, y, x] = bot_diff
    return image_diff, flow_diff


# -- Accum --------------------------------------------------------------------------------------------------------


def accum_shape(bottom_shapes, top_height=0, top_width=0, size_divisible_by=None, have_reference=False):
    """AccumLayer::Reshape: the top's (num, channels, height, width). size_divisible_by None: the field is unset."""
    shapes = [tuple(int(v) for v in s) for s in bottom_shapes]
    num = shapes[0][0]
    if have_reference:
        if len(shapes) < 2:
            raise ValueError("Need at least two bottom blobs (one as reference)")
        total = 0
        for s in shapes[:-1]:
            total += s[1]
            if s[0] != num:
                raise ValueError("All accumulated layers must have same number of images (num_)")
        if total < 1:
            raise ValueError("Accumulated layers must have some channels in total")
        return (num, total, shapes[-1][2], shapes[-1][3])
    maxh = maxw = -1
    total = 0
    for s in shapes:
        total += s[1]
        maxh = max(maxh, s[2])
        maxw = max(maxw, s[3])
        if s[0] != num:
            raise ValueError("All accumulated layers must have same number of images (num_)")
    if total < 1:
        raise ValueError("Accumulated layers must have some channels in total")
    if size_divisible_by is not None:
        sdb = F32(size_divisible_by)
        with np.errstate(divide="ignore", invalid="ignore"):
            th = _host_f2i(F32(np.ceil(F32(maxh) / sdb)) * sdb)
            tw = _host_f2i(F32(np.ceil(F32(maxw) / sdb)) * sdb)
    else:
        th, tw = int(top_height), int(top_width)
    if th > maxh and tw > maxw:  # both larger, or neither is used
        return (num, total, th, tw)
    return (num, total, maxh, maxw)


def accum(bottoms, top_h, top_w):
    """AccumLayer::Forward_gpu: each bottom resized by UpscaleFeatures to top_h x top_w, stacked along channels."""
    parts = []
    num0 = None
    for b in bottoms:
        b = np.asarray(b, F32)
        num, ch, bh, bw = b.shape
        num0 = num if num0 is None else num0
        assert num == num0, "All accumulated layers must have same number of images (num_)"
        count = b.size
        # reads are clamped to src_count, one past the end; a 0 stands in for that element (its weight is always 0)
        src = np.concatenate([b.reshape(-1), np.zeros(1, F32)])
        cn = np.arange(num * ch)
        cn_h = (cn * bh).astype(F32)
        up = np.empty((num * ch, top_h, top_w), F32)
        with np.errstate(divide="ignore", invalid="ignore"):
            for dh in range(top_h):
                ypos = F32(F32(dh) / F32(top_h - 1)) * F32(bh - 1)
                tly = F32(np.floor(ypos))
                ydist = F32(ypos - tly)
                for dw in range(top_w):
                    xpos = F32(F32(dw) / F32(top_w - 1)) * F32(bw - 1)
                    tlx = F32(np.floor(xpos))
                    xdist = F32(xpos - tlx)
                    # srcIdxOff is computed in float and converted to int (a NaN position gives 0 on the GPU)
                    idx = _device_f2i(F32(bw) * (cn_h + tly) + tlx)
                    s_tl = src[idx]
                    s_tr = src[np.minimum(idx + 1, count)]
                    s_bl = src[np.minimum(idx + bw, count)]
                    s_br = src[np.minimum(idx + 1 + bw, count)]
                    one = F32(1)
                    up[:, dh, dw] = (
                        (one - xdist) * (one - ydist) * s_tl
                        + xdist * ydist * s_br
                        + (one - xdist) * ydist * s_bl
                        + xdist * (one - ydist) * s_tr
                    )
        parts.append(up.reshape(num, ch, top_h, top_w))
    return np.concatenate(parts, axis=1)


# -- ChannelNorm --------------------------------------------------------------------------------------------------


def channel_norm(x):
    """ChannelNormLayer forward: sqrt of the sum over channels (in channel order) of the squares; (N, 1, H, W)."""
    x = np.asarray(x, F32)
    num, ch, h, w = x.shape
    norm = np.zeros((num, 1, h, w), F32)
    for c in range(ch):
        norm[:, 0] += x[:, c] * x[:, c]
    return np.sqrt(norm)


def channel_norm_backward(x, top, top_diff):
    """ChannelNormLayer backward: top_diff * x / (top + 1e-9); the 1e-9 is a double, so the division is in double."""
    x = np.asarray(x, F32)
    top = np.asarray(top, F32)
    td = np.asarray(top_diff, F32)
    numer = (td * x).astype(np.float64)  # float * float, then promoted
    denom = top.astype(np.float64) + 1e-9
    return (numer / denom).astype(F32)


# -- DataAugmentation (mean only) -------------------------------------------------------------------------------


def data_augmentation_mean(
    x_batches, recompute_mean, mean_per_pixel, start_iter=0, mean_blob=None, channel_mean=None, proto_mean=None
):
    """DataAugmentationLayer::Forward_gpu without cropping, once per batch of x_batches.

    Returns (tops, (num_iter, mean_blob (1, C, H, W), channel_mean (1, C, 1, 1))). start_iter, mean_blob and
    channel_mean are blobs 0, 1 and 2 as loaded (zeros when None). proto_mean: the 3 values of
    augmentation_param.mean, used only when recompute_mean is 0 and mean_per_pixel is false.
    """
    batches = [np.asarray(b, F32) for b in x_batches]
    shape = batches[0].shape
    num, ch, h, w = shape
    count = ch * h * w
    area = h * w
    num_iter = F32(start_iter)
    mean = np.zeros(count, F32) if mean_blob is None else np.asarray(mean_blob, F32).reshape(count).copy()
    cmean = np.zeros(ch, F32) if channel_mean is None else np.asarray(channel_mean, F32).reshape(ch).copy()
    tops = []
    for xb in batches:
        assert xb.shape == shape, "the layer reshapes only on setup"
        top = xb.reshape(num, count).copy()  # caffe_gpu_memcpy bottom -> top
        num_iter = F32(int(num_iter) + 1)
        if recompute_mean > 0:
            if num_iter <= recompute_mean:
                mean = mean * F32(num_iter - F32(1))  # scal
                inv_num = F32(1) / F32(num)
                for n in range(num):
                    mean = inv_num * top[n] + mean  # axpy
                mean = mean * (F32(1) / F32(num_iter))  # scal
                inv_area = F32(1) / F32(area)
                rows = mean.reshape(ch, area)
                for c in range(ch):  # gemv with a vector of ones, alpha 1/area, beta 0
                    s = F32(0)
                    for j in range(area):
                        s = F32(s + rows[c, j] * F32(1))
                    cmean[c] = inv_area * s
            if mean_per_pixel:
                for n in range(num):
                    top[n] = F32(-1) * mean + top[n]  # axpy
            else:
                per_pixel = np.repeat(cmean, area)
                for n in range(num):
                    top[n] = F32(-1) * per_pixel + top[n]  # gemm (C x 1) * (1 x area), beta 1
        elif proto_mean is not None and len(proto_mean) == 3 and not mean_per_pixel:
            assert ch == 3, "the predefined mean holds 3 values"
            per_pixel = np.repeat(np.asarray(proto_mean, F32), area)
            for n in range(num):
                top[n] = F32(-1) * per_pixel + top[n]
        tops.append(top.reshape(shape))
    return tops, (float(num_iter), mean.reshape(1, ch, h, w), cmean.reshape(1, ch, 1, 1))


# -- self-checks --------------------------------------------------------------------------------------------------


def _naive_correlation64(b0, b1, pad, k, md, s1, s2):
    """An independent float64 formulation: top[o, y, x] = mean over a k*k*C patch of b0 * (b1 displaced)."""
    b0 = np.pad(np.asarray(b0, np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    b1 = np.pad(np.asarray(b1, np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    num, ch, ph, pw = b0.shape
    kr = (k - 1) // 2
    th = -(-(ph - 2 * (md + kr)) // s1)
    tw = -(-(pw - 2 * (md + kr)) // s1)
    gr = md // s2
    gw = 2 * gr + 1
    top = np.zeros((num, gw * gw, th, tw))
    for dy in range(-gr, gr + 1):
        for dx in range(-gr, gr + 1):
            o = (dy + gr) * gw + (dx + gr)
            for y in range(th):
                for x in range(tw):
                    cy, cx = y * s1 + md + kr, x * s1 + md + kr  # patch centre
                    a = b0[:, :, cy - kr : cy + kr + 1, cx - kr : cx + kr + 1]
                    b = b1[:, :, cy + dy * s2 - kr : cy + dy * s2 + kr + 1, cx + dx * s2 - kr : cx + dx * s2 + kr + 1]
                    top[:, o, y, x] = (a * b).sum(axis=(1, 2, 3)) / (k * k * ch)
    return top


def _numgrad(f, arrays, which, eps):
    """Central differences of the scalar f(*arrays) with respect to arrays[which] (float64)."""
    base = [a.copy() for a in arrays]
    g = np.zeros_like(base[which])
    it = np.nditer(g, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        plus = [a.copy() for a in base]
        minus = [a.copy() for a in base]
        plus[which][i] += eps
        minus[which][i] -= eps
        g[i] = (f(*plus) - f(*minus)) / (2 * eps)
    return g


def _self_check():
    rng = np.random.default_rng(0)
    b = rng.standard_normal((2, 3, 7, 9)).astype(F32)
    b1 = rng.standard_normal((2, 3, 7, 9)).astype(F32)

    # correlation: zero displacement of a blob with itself is the mean of squares over channels
    top = correlation(b, b, pad=0, kernel_size=1, max_displacement=0)
    assert top.shape == (2, 1, 7, 9) and top.dtype == F32
    np.testing.assert_allclose(top[:, 0], (b.astype(np.float64) ** 2).mean(axis=1), rtol=1e-6, atol=1e-7)
    top = correlation(b, b, pad=2, kernel_size=1, max_displacement=2)
    assert top.shape == (2, 25, 7, 9)
    np.testing.assert_allclose(top[:, 12], (b.astype(np.float64) ** 2).mean(axis=1), rtol=1e-6, atol=1e-7)
    # against an independent formulation, strides and kernels included; 40 channels use two lane blocks
    wide0 = rng.standard_normal((1, 40, 9, 10)).astype(F32)
    wide1 = rng.standard_normal((1, 40, 9, 10)).astype(F32)
    for args in [(1, 3, 2, 1, 1), (2, 3, 4, 2, 2), (0, 1, 2, 2, 1), (3, 1, 3, 1, 2), (1, 3, 1, 3, 1)]:
        np.testing.assert_allclose(correlation(b, b1, *args), _naive_correlation64(b, b1, *args), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            correlation(wide0, wide1, *args), _naive_correlation64(wide0, wide1, *args), rtol=1e-5, atol=1e-6
        )
    assert correlation(b, b1, 4, 1, 4).shape == (2, 81, 7, 9)  # FlowNetC-like (pad = max_displacement)
    assert correlation(b, b1, 4, 1, 4, 2, 2).shape == (2, 25, 4, 5)

    # correlation backward: numerical gradient of sum(top * top_diff), float64 copies
    small0 = rng.standard_normal((2, 2, 4, 5))
    small1 = rng.standard_normal((2, 2, 4, 5))
    for args in [(1, 3, 1, 1, 1), (2, 1, 2, 2, 1), (0, 1, 1, 1, 1), (2, 3, 2, 2, 2), (1, 1, 2, 3, 2)]:
        t = correlation(small0, small1, *args)
        tdiff = rng.standard_normal(t.shape)
        g0, g1 = correlation_backward(small0, small1, tdiff, *args)

        def loss(a0, a1, args=args, tdiff=tdiff):
            return float((correlation(a0, a1, *args) * tdiff).sum())

        np.testing.assert_allclose(g0, _numgrad(loss, [small0, small1], 0, 1e-4), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(g1, _numgrad(loss, [small0, small1], 1, 1e-4), rtol=1e-6, atol=1e-9)
        f0, f1 = correlation_backward(small0.astype(F32), small1.astype(F32), tdiff.astype(F32), *args)
        assert f0.dtype == F32 and f1.dtype == F32
        np.testing.assert_allclose(f0, g0, rtol=1e-4, atol=1e-6)

    # resample: to the same size is the identity, a constant stays constant (sum / wsum)
    for rtype in ("NEAREST", "LINEAR", "CUBIC"):
        np.testing.assert_array_equal(resample(b, 7, 9, rtype), b)
    const = np.full((1, 2, 6, 8), 3.5, F32)
    for rtype in ("LINEAR", "CUBIC"):
        for oh, ow in [(3, 4), (12, 16), (5, 7), (2, 2)]:
            for aa in (True, False):
                np.testing.assert_allclose(resample(const, oh, ow, rtype, aa), 3.5, rtol=1e-6)
    # a 2x upsampling with LINEAR is the half-pixel bilinear one inside (fx == fy makes the swap invisible)
    up = resample(b, 14, 18, "LINEAR")
    want = (
        0.75 * 0.75 * b[:, :, 1, 2]
        + 0.75 * 0.25 * b[:, :, 1, 3]
        + 0.25 * 0.75 * b[:, :, 2, 2]
        + 0.25 * 0.25 * b[:, :, 2, 3]
    )  # x_in = 2.25, y_in = 1.25
    np.testing.assert_allclose(up[:, :, 3, 5], want, rtol=1e-5, atol=1e-6)
    # the swapped fx/fy: x_in = x_out*fx + fy/2 - 0.5 can leave the input; LINEAR then gives 0, NEAREST reads outside
    odd = np.ones((1, 1, 8, 4), F32)
    res = resample(odd, 1, 8, "LINEAR", antialias=False)  # fx = 0.5, fy = 8: x_in = 0.5 x_out + 3.5
    assert res[0, 0, 0, 0] == 1 and np.all(res[0, 0, 0, 1:] == 0), res
    # antialias (on because fy > 1) also scales x by 1/fx = 2: the x taps all get weight 0 here
    assert np.all(resample(odd, 1, 8, "LINEAR") == 0)
    try:
        resample(odd, 1, 8, "NEAREST")
    except AssertionError:
        pass
    else:
        raise AssertionError("NEAREST should read outside the input here")
    assert _cuda_round(F32(2.5)) == 3 and _cuda_round(F32(-2.5)) == -3 and _cuda_round(F32(-0.25)) == 0

    # flow warp: zero flow is the identity, an integer flow shifts, outside pixels take the fill value
    zero = np.zeros((2, 2, 7, 9), F32)
    np.testing.assert_array_equal(flow_warp(b, zero), b)
    shift = zero.copy()
    shift[:, 0] = 2.0  # x2 = x + 2
    shift[:, 1] = -1.0  # y2 = y - 1
    warped = flow_warp(b, shift)
    np.testing.assert_array_equal(warped[:, :, 1:, :7], b[:, :, :6, 2:])
    assert np.all(warped[:, :, 0] == 0) and np.all(warped[:, :, :, 7:] == 0)
    warped = flow_warp(b, shift, fill_nan=True)
    assert np.all(np.isnan(warped[:, :, 0])) and not np.isnan(warped[:, :, 1:, :7]).any()
    frac = zero.copy()
    frac[:, 0] = 0.25
    warped = flow_warp(b, frac)  # x2 in [8, 9) reads TL = TR = the last column
    np.testing.assert_allclose(warped[:, :, :, :8], 0.75 * b[:, :, :, :8] + 0.25 * b[:, :, :, 1:], rtol=1e-6)
    np.testing.assert_array_equal(warped[:, :, :, 8], b[:, :, :, 8])

    # flow warp backward: numerical gradient (fractions away from cell borders; some pixels leave the image)
    img = rng.standard_normal((2, 3, 4, 5))
    fl = rng.integers(-2, 3, (2, 2, 4, 5)) + rng.uniform(0.2, 0.8, (2, 2, 4, 5))
    tdiff = rng.standard_normal((2, 3, 4, 5))
    gi, gf = flow_warp_backward(img, fl, tdiff)

    def wloss(a, f):
        return float((flow_warp(a, f) * tdiff).sum())

    np.testing.assert_allclose(gi, _numgrad(wloss, [img, fl], 0, 1e-5), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gf, _numgrad(wloss, [img, fl], 1, 1e-6), rtol=1e-5, atol=1e-8)
    assert np.any(gf == 0) and np.any(gf != 0)
    fi, ff = flow_warp_backward(img.astype(F32), fl.astype(F32), tdiff.astype(F32))
    assert fi.dtype == F32 and ff.dtype == F32
    np.testing.assert_allclose(ff, gf, rtol=1e-4, atol=1e-5)

    # accum: the same size is the identity; 2x - 1 upsampling is align-corners bilinear; sizes; quirks
    np.testing.assert_allclose(accum([b], 7, 9), b, rtol=1e-6, atol=1e-6)
    small = rng.standard_normal((2, 1, 4, 5)).astype(F32)
    got = accum([b, small], 7, 9)
    assert got.shape == (2, 4, 7, 9)
    np.testing.assert_allclose(got[:, :3], b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[:, 3, ::2, ::2], small[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[:, 3, 1, 1], small[:, 0, :2, :2].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    leak = np.zeros((1, 2, 3, 3), F32)
    leak[0, 1, 0, 0] = np.inf  # channel 0's last row and column read channel 1's first pixel with weight 0
    with np.errstate(invalid="ignore"):
        out = accum([leak], 5, 5)
    assert np.isnan(out[0, 0, 4, :2]).all() and np.isnan(out[0, 0, 2:, 4]).all()  # BL/BR, TR/BR reads
    assert np.isnan(out[0, 0]).sum() == 5 and np.all(out[0, 0, :2] == 0)
    with np.errstate(invalid="ignore"):
        assert np.isnan(accum([b], 1, 9)).all()  # 0/0 positions
    assert accum_shape([(2, 3, 7, 9), (2, 1, 4, 5)]) == (2, 4, 7, 9)
    assert accum_shape([(2, 3, 7, 9), (2, 1, 4, 5)], 10, 12) == (2, 4, 10, 12)
    assert accum_shape([(2, 3, 7, 9), (2, 1, 4, 5)], 10, 9) == (2, 4, 7, 9)  # both must be larger
    assert accum_shape([(1, 2, 50, 100)], size_divisible_by=64) == (1, 2, 64, 128)
    assert accum_shape([(1, 2, 64, 100)], size_divisible_by=64) == (1, 2, 64, 100)  # not divisible
    assert accum_shape([(1, 2, 50, 100)], size_divisible_by=0) == (1, 2, 50, 100)
    assert accum_shape([(2, 3, 7, 9), (2, 1, 4, 5), (2, 5, 20, 30)], have_reference=True) == (2, 4, 20, 30)

    # channel norm
    norm = channel_norm(b)
    np.testing.assert_allclose(norm[:, 0], np.sqrt((b.astype(np.float64) ** 2).sum(axis=1)), rtol=1e-6)
    tdiff = rng.standard_normal(norm.shape).astype(F32)
    np.testing.assert_allclose(channel_norm_backward(b, norm, tdiff), tdiff * b / norm, rtol=1e-5)
    assert np.all(
        channel_norm_backward(np.zeros((1, 2, 1, 1), F32), np.zeros((1, 1, 1, 1), F32), np.ones((1, 1, 1, 1), F32)) == 0
    )

    # data augmentation mean: the running mean of the first recompute_mean batches, then frozen
    batches = [rng.standard_normal((2, 3, 4, 5)).astype(F32) + 10 for _ in range(4)]
    tops, (num_iter, mean, cmean) = data_augmentation_mean(batches, recompute_mean=3, mean_per_pixel=True)
    assert num_iter == 4.0 and mean.shape == (1, 3, 4, 5) and cmean.shape == (1, 3, 1, 1)
    want = np.mean(np.stack(batches[:3]), axis=(0, 1))
    np.testing.assert_allclose(mean[0], want, rtol=1e-5)
    np.testing.assert_allclose(cmean[:, :, 0, 0], want.mean(axis=(1, 2))[None], rtol=1e-5)
    np.testing.assert_allclose(tops[3], batches[3] - mean, rtol=1e-6)
    np.testing.assert_allclose(tops[0], batches[0] - batches[0].mean(axis=0), rtol=1e-5, atol=1e-5)
    tops, state = data_augmentation_mean(batches[:2], recompute_mean=3, mean_per_pixel=False)
    np.testing.assert_allclose(tops[1], batches[1] - state[2], rtol=1e-5, atol=1e-5)
    tops, state = data_augmentation_mean(batches[:1], 1000, False, start_iter=5000, channel_mean=[1.0, 2.0, 3.0])
    np.testing.assert_allclose(tops[0], batches[0] - np.array([1, 2, 3], F32).reshape(1, 3, 1, 1), rtol=1e-6)
    assert state[0] == 5001.0
    tops, _ = data_augmentation_mean(batches[:1], 0, True)
    np.testing.assert_array_equal(tops[0], batches[0])
    tops, _ = data_augmentation_mean(batches[:1], 0, False, proto_mean=[1.0, 2.0, 3.0])
    np.testing.assert_allclose(tops[0], batches[0] - np.array([1, 2, 3], F32).reshape(1, 3, 1, 1), rtol=1e-6)


if __name__ == "__main__":
    _self_check()
    print("flownet_reference: all self-checks passed")
