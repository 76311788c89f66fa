"""``caffe.io``, ``caffe.Classifier`` and ``caffe.Detector`` as pycaffe defines them (io.py, classifier.py,
detector.py, test_io.py)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from golden import CORPUS, GOLDEN

from prototxt2py import caffe
from prototxt2py.caffe.proto import caffe_pb2
from prototxt2py.errors import InputFileError, Prototxt2pyError, ResourceLimitError

IMAGES = GOLDEN / "data" / "datasets" / "images"
CIFAR = CORPUS / "everpeace__caffe/examples/cifar10"


# -- proto conversions ---------------------------------------------------------------------------------------------
def test_blobproto_round_trips() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    diff = -arr
    blob = caffe.io.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), diff)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4, data=list(range(24)))
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 2, 3, 4)  # legacy 4-D fields win
    arrays = [arr, np.ones((5,), np.float32)]
    back = caffe.io.blobprotovector_str_to_arraylist(caffe.io.arraylist_to_blobprotovector_str(arrays))
    assert [a.shape for a in back] == [(2, 3, 4), (5,)]
    np.testing.assert_array_equal(back[0], arr)


def test_datum_round_trips() -> None:
    u8 = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(u8, label=7)
    assert datum.data == u8.tobytes() and not len(datum.float_data) and datum.label == 7
    back = caffe.io.datum_to_array(datum)
    assert back.dtype == np.uint8 and np.array_equal(back, u8)
    f = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(f)
    assert not datum.data and len(datum.float_data) == 24
    np.testing.assert_allclose(caffe.io.datum_to_array(datum), f, rtol=1e-6)
    with pytest.raises(ValueError, match="Incorrect array shape"):
        caffe.io.array_to_datum(np.zeros((2, 2)))


# -- images --------------------------------------------------------------------------------------------------------
def test_load_image_color_and_grey() -> None:
    cv2 = pytest.importorskip("cv2")
    path = IMAGES / "color_00.png"
    bgr = cv2.imread(str(path))
    img = caffe.io.load_image(str(path))
    assert img.dtype == np.float32 and img.shape == bgr.shape and 0 <= img.min() and img.max() <= 1
    np.testing.assert_allclose(img, bgr[:, :, ::-1] / 255.0, atol=1e-6)  # RGB in [0, 1]
    grey = caffe.io.load_image(str(path), color=False)
    assert grey.shape == bgr.shape[:2] + (1,)
    want = (bgr[:, :, ::-1] / 255.0) @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(grey[:, :, 0], want, atol=1e-6)
    with pytest.raises(Prototxt2pyError, match="Could not open"):
        caffe.io.load_image(str(IMAGES / "missing.png"))


def test_resize_image() -> None:
    im = np.random.default_rng(0).uniform(size=(8, 10, 3)).astype(np.float32)
    out = caffe.io.resize_image(im, (16, 20))
    assert out.shape == (16, 20, 3) and out.dtype == np.float32
    # bilinear with pixel-centre alignment: output (2k+1, 2j+1) at 2x sits between input pixels k, k+1
    np.testing.assert_allclose(out[5, 7], 0.75 * (0.75 * im[2, 3] + 0.25 * im[2, 4]) +
                               0.25 * (0.75 * im[3, 3] + 0.25 * im[3, 4]), rtol=1e-5)
    five = np.random.default_rng(1).uniform(size=(8, 8, 5)).astype(np.float32)  # any channel count
    assert caffe.io.resize_image(five, (4, 4)).shape == (4, 4, 5)
    const = np.full((5, 5, 1), 0.3, np.float32)
    assert np.all(caffe.io.resize_image(const, (7, 3)) == np.float32(0.3))


def _skimage_013(im: np.ndarray, dims: tuple[int, int], order: int) -> np.ndarray:
    """pycaffe's resize for 1 or 3 channels as Caffe 1.0 ran it, written out pixel by pixel: the image scaled to
    [0, 1] (float32), scikit-image 0.13's ``_warp_fast`` per channel (pixel centres, ``mode='constant'`` zeros,
    round-half-away nearest, bilinear, Catmull-Rom bicubic from ``_shared/interpolation.pxd``), clipped, scaled
    back."""
    lo, hi = im.min(), im.max()
    std = ((im - lo) / (hi - lo)).astype(np.float64)

    def px(k: int, r: int, c: int) -> float:
        return std[r, c, k] if 0 <= r < std.shape[0] and 0 <= c < std.shape[1] else 0.0

    def cubic(x: float, f: list[float]) -> float:
        return f[1] + 0.5 * x * (f[2] - f[0] + x * (2 * f[0] - 5 * f[1] + 4 * f[2] - f[3] +
                                                    x * (3 * (f[1] - f[2]) + f[3] - f[0])))

    out = np.zeros(dims + (im.shape[2],))
    rs, cs = im.shape[0] / dims[0], im.shape[1] / dims[1]
    for k, i, j in np.ndindex(im.shape[2], *dims):
        r, c = rs * (i + 0.5) - 0.5, cs * (j + 0.5) - 0.5
        r0, c0 = int(np.floor(r)), int(np.floor(c))
        dr, dc = r - r0, c - c0
        if order == 0:
            away = (lambda v: int(v + 0.5) if v > 0 else int(v - 0.5))  # noqa: E731
            out[i, j, k] = px(k, away(r), away(c))
        elif order == 1:
            out[i, j, k] = ((1 - dr) * ((1 - dc) * px(k, r0, c0) + dc * px(k, r0, c0 + 1)) +
                            dr * ((1 - dc) * px(k, r0 + 1, c0) + dc * px(k, r0 + 1, c0 + 1)))
        else:
            rows = [cubic(dc, [px(k, r0 - 1 + a, c0 - 1 + b) for b in range(4)]) for a in range(4)]
            out[i, j, k] = cubic(dr, rows)
    return (np.clip(out, 0, 1) * (hi - lo) + lo).astype(np.float32)


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("dims", [(20, 24), (17, 29), (7, 9), (1, 1)])
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_image_is_caffe_10s_pycaffe(order: int, dims: tuple[int, int], channels: int) -> None:
    """Bit for bit, borders included: upsampling reads beyond the border (the image's minimum there, from the
    zero padding of the [0, 1]-scaled image), bicubic is clipped to the image's range."""
    im = (np.random.default_rng(3).uniform(size=(10, 12, channels)) * 255).astype(np.float32)
    np.testing.assert_array_equal(caffe.io.resize_image(im, dims, order), _skimage_013(im, dims, order))


def test_resize_image_other_channel_counts_are_corner_aligned() -> None:
    """pycaffe sends 2, 4, ... channels through ``scipy.ndimage.zoom``: corners map to corners."""
    im = np.tile(np.arange(4, dtype=np.float32), (2, 1))[:, :, None].repeat(2, axis=2)
    out = caffe.io.resize_image(im, (2, 8))
    np.testing.assert_allclose(out[0, :, 0], np.arange(8) * 3 / 7, rtol=1e-6)
    nearest = caffe.io.resize_image(np.arange(5, dtype=np.float32)[None, :, None].repeat(4, 2), (1, 9), 0)
    assert nearest[0, :, 0].tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]  # o * 4 / 8, halves rounded up


def _bomb_png() -> bytes:
    """The header of a 60 000 x 60 000 PNG: OpenCV refuses it (CV_IO_MAX_IMAGE_PIXELS) before any pixel."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_decompression_bomb_is_a_project_error(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png())
    with pytest.raises(InputFileError) as info:
        caffe.io.load_image(str(bomb))
    assert str(info.value).startswith(f"{bomb}: cannot decode the image: it has more pixels than OpenCV's limit")
    assert "\n" not in str(info.value)
    datum = caffe_pb2.Datum(data=_bomb_png(), encoded=True)
    with pytest.raises(Prototxt2pyError, match="cannot decode the encoded Datum: it has more pixels"):
        caffe.io.datum_to_array(datum)


@pytest.mark.parametrize("dims", [(0, 0), (-5, 10), (10, 0)])
def test_resize_image_refuses_empty_or_negative_sizes(dims: tuple[int, int]) -> None:
    im = np.random.default_rng(0).uniform(size=(4, 5, 3)).astype(np.float32)
    want = rf"^new_dims must be positive \(height, width\), got \({dims[0]}, {dims[1]}\)$"
    with pytest.raises(ValueError, match=want):
        caffe.io.resize_image(im, dims)


def test_resize_image_refuses_huge_sizes_before_allocating() -> None:
    im = np.random.default_rng(0).uniform(size=(4, 5, 3)).astype(np.float32)
    with pytest.raises(ResourceLimitError, match=r"resizing an image to 100000x100000x3 \(float32\) would need 111.8"):
        caffe.io.resize_image(im, (100000, 100000))
    with pytest.raises(ResourceLimitError, match="resizing an image to 99999999999x5x3"):
        caffe.io.resize_image(np.full((4, 5, 3), 0.5, np.float32), (99999999999, 5))  # the constant-image path too


def test_oversample_geometry() -> None:
    rng = np.random.default_rng(2)
    images = [rng.uniform(size=(6, 8, 3)).astype(np.float32) for _ in range(2)]
    crops = caffe.io.oversample(images, (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    im = images[1]
    want = [im[0:4, 0:4], im[0:4, 4:8], im[2:6, 0:4], im[2:6, 4:8], im[1:5, 2:6]]  # corners, then centre
    for k, w in enumerate(want):
        np.testing.assert_array_equal(crops[10 + k], w)
        np.testing.assert_array_equal(crops[15 + k], w[:, ::-1])  # mirrors follow, left-right flipped


def test_transformer_order_and_inverse() -> None:
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    mean = np.array([10.0, 20.0, 30.0])
    t.set_mean("data", mean)
    t.set_input_scale("data", 0.5)
    img = np.random.default_rng(3).uniform(size=(4, 5, 3)).astype(np.float32)
    before = img.copy()
    out = t.preprocess("data", img)
    # pycaffe's order: transpose, channel swap, raw scale, mean, input scale
    want = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255.0 - mean[:, None, None]) * 0.5
    np.testing.assert_allclose(out, want, rtol=1e-5)
    assert out.dtype == np.float32 and np.array_equal(img, before)  # the caller's image is left alone
    np.testing.assert_allclose(t.deprocess("data", out[None]), img, rtol=1e-5, atol=1e-6)
    big = np.random.default_rng(4).uniform(size=(8, 10, 3)).astype(np.float32)
    assert t.preprocess("data", big).shape == (3, 4, 5)  # resized to the input's H x W first
    with pytest.raises(ValueError, match="not one of the net inputs"):
        t.preprocess("label", img)
    with pytest.raises(ValueError, match="Mean channels incompatible"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="Channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Transpose order"):
        t.set_transpose("data", (1, 0))
    t.set_mean("data", np.ones((3, 8, 10)))  # an elementwise mean of another size is resized
    assert t.mean["data"].shape == (3, 4, 5)


# -- Classifier / Detector ----------------------------------------------------------------------------------------
def _cifar_images() -> list[np.ndarray]:
    return [caffe.io.load_image(str(IMAGES / f"color_0{i}.png")) for i in range(2)]


def test_transformer_keeps_a_grey_mean_and_pycaffes_float32_rounding() -> None:
    """An H x W mean stays H x W (pycaffe broadcasts it; ``deprocess`` adds it back in place), and each scaling
    step rounds to float32 as pycaffe's in-place operations do."""
    t = caffe.io.Transformer({"data": (1, 1, 4, 5)})
    t.set_mean("data", np.full((4, 5), 0.5))
    assert t.mean["data"].shape == (4, 5)
    np.testing.assert_array_equal(t.deprocess("data", np.zeros((1, 1, 4, 5), np.float32)), np.full((4, 5), 0.5))
    t = caffe.io.Transformer({"data": (1, 3, 6, 7)})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([104.00698793, 116.66876762, 122.67891434]))
    t.set_input_scale("data", 0.017)
    im = np.random.default_rng(5).uniform(size=(6, 7, 3)).astype(np.float32)
    want = im.transpose(2, 0, 1).copy()
    want *= 255.0
    want -= t.mean["data"]
    want *= 0.017
    got = t.preprocess("data", im)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, ((im.transpose(2, 0, 1) * 255.0 - t.mean["data"]) * 0.017).astype(np.float32))


def test_classifier_predict_center_and_oversample() -> None:
    clf = caffe.Classifier(str(CIFAR / "cifar10_quick.prototxt"), str(CIFAR / "cifar10_quick_iter_5000.caffemodel"),
                           image_dims=(40, 40), raw_scale=255.0, channel_swap=(2, 1, 0))
    images = _cifar_images()
    centre = clf.predict(images, oversample=False)
    assert centre.shape == (2, 10)
    np.testing.assert_allclose(centre.sum(1), 1.0, rtol=1e-5)
    resized = [caffe.io.resize_image(im, (40, 40)) for im in images]
    by_hand = []
    for im in resized:
        x = clf.transformer.preprocess("data", im[4:36, 4:36])
        by_hand.append(clf.forward(data=x[None])["prob"].copy()[0])
    np.testing.assert_allclose(centre, np.array(by_hand), rtol=1e-4, atol=1e-6)
    ten = clf.predict(images)  # mean over 4 corners, centre and their mirrors
    crops = caffe.io.oversample(resized[1:], (32, 32))
    probs = [clf.forward(data=clf.transformer.preprocess("data", c)[None])["prob"].copy()[0] for c in crops]
    assert ten.shape == (2, 10)
    np.testing.assert_allclose(ten[1], np.mean(probs, axis=0), rtol=1e-4, atol=1e-6)


def test_detector_windows_and_context_pad(tmp_path: Path) -> None:
    det = caffe.Detector(str(CIFAR / "cifar10_quick.prototxt"), str(CIFAR / "cifar10_quick_iter_5000.caffemodel"),
                         raw_scale=255.0, mean=np.array([100.0, 110.0, 120.0]), context_pad=4)
    assert list(det.crop_dims) == [32, 32, 3]
    np.testing.assert_allclose(det.crop_mean[0, 0], np.array([100.0, 110.0, 120.0]) / 255.0)
    image = IMAGES / "color_01.png"
    img = caffe.io.load_image(str(image))
    windows = [np.array([0, 0, img.shape[0] // 2, img.shape[1] // 2]), np.array([2, 3, img.shape[0] - 1, 20])]
    out = det.detect_windows([(str(image), windows)])
    assert [d["filename"] for d in out] == [str(image)] * 2
    assert all(d["prediction"].shape == (10,) for d in out)
    crop = det.crop(img, windows[0])  # the window touches the top-left corner: padded with the mean there
    assert crop.shape == (32, 32, 3)
    np.testing.assert_allclose(crop[0, 0], det.crop_mean[0, 0])
    plain = caffe.Detector(str(CIFAR / "cifar10_quick.prototxt"), None)
    np.testing.assert_array_equal(plain.crop(img, windows[1]), img[2:img.shape[0] - 1, 3:20])
    for bad, message in (([0, 0, np.nan, 5], r"a window is 4 finite numbers \(ymin, xmin, ymax, xmax\), got "),
                         ([0, 0, 5], r"a window is 4 finite numbers"),
                         ([4, 0, 2, 5], r"window \[4, 0, 2, 5\] is empty \(needs ymin <")):
        for detector in (det, plain):
            with pytest.raises(ValueError, match=message):
                detector.crop(img, bad)
    assert det.crop(img, [5, 5, 5, 9]).shape == (32, 32, 3)  # with context the box is inclusive: one row
    with pytest.raises(ValueError, match=r"window \[5, 5, 5, 9\] is empty \(needs ymin < ymax and xmin < xmax\)"):
        plain.crop(img, [5, 5, 5, 9])


@pytest.mark.slow
def test_readme_pycaffe_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The README's classification example, verbatim, on AlexNet with drawn weights (no trained ones here)."""
    cv2 = pytest.importorskip("cv2")
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    section = text[text.index("## pycaffe scripts"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[: code.index("```")]
    weights, image = tmp_path / "w.caffemodel", tmp_path / "cat.jpg"
    caffe.set_random_seed(0)
    caffe.Net(str(root / "fixtures/alexnet/deploy.prototxt"), caffe.TEST).save(str(weights))
    cv2.imwrite(str(image), cv2.resize(cv2.imread(str(IMAGES / "color_00.png")), (300, 240)))
    monkeypatch.chdir(root)
    scope: dict = {}
    exec(code.replace('"bvlc_alexnet.caffemodel"', repr(str(weights))).replace('"cat.jpg"', repr(str(image))), scope)
    top5 = scope["top5"]
    assert len(top5) == 5 and scope["probs"].shape == (1000,)
    assert scope["prob"].shape == (1000,) and abs(float(scope["prob"].sum()) - 1) < 1e-4
    assert str(int(top5[0])) in capsys.readouterr().out


def test_set_mean_of_a_float64_mean_follows_pycaffes_arithmetic() -> None:
    """pycaffe's ``set_mean``, transcribed: the mean (float64, as ``np.load('ilsvrc_2012_mean.npy')`` gives)
    normalised in float64, resized, rescaled in float32 (numpy 1's casting by a scalar). Casting to float32 first
    was 1-2 ulp off."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        c = int(rng.choice([1, 3]))
        mean = rng.uniform(50, 200, size=(c, *rng.integers(3, 30, 2)))
        h, w = (int(v) for v in rng.integers(3, 30, 2))
        t = caffe.io.Transformer({"data": (1, c, h, w)})
        t.set_mean("data", mean)
        lo, hi = mean.min(), mean.max()
        resized = caffe.io.resize_image(((mean - lo) / (hi - lo)).transpose((1, 2, 0)), (h, w)).transpose((2, 0, 1))
        want = resized * np.float32(hi - lo) + np.float32(lo)
        assert t.mean["data"].dtype == np.float32
        np.testing.assert_array_equal(t.mean["data"], want)


def test_resize_image_keeps_the_input_dtype_as_pycaffe() -> None:
    """A uint8 image of 4 channels goes through ``scipy.ndimage.zoom`` as uint8 in pycaffe, so its values are
    rounded integers; a float64 image of 3 channels is normalised in float64."""
    ndimage = pytest.importorskip("scipy.ndimage")
    im = (np.random.default_rng(0).uniform(size=(5, 6, 4)) * 255).astype(np.uint8)
    got = caffe.io.resize_image(im, (9, 7), 1)
    np.testing.assert_array_equal(got, ndimage.zoom(im, (9 / 5, 7 / 6, 1), order=1).astype(np.float32))
    assert got.dtype == np.float32 and (got == np.round(got)).all()
    rgb = np.random.default_rng(1).uniform(size=(5, 6, 3))
    lo, hi = rgb.min(), rgb.max()
    normalised = caffe.io.resize_image((rgb - lo) / (hi - lo), (9, 7), 1)  # in [0, 1]: scale 1, offset 0
    want = (normalised.astype(np.float64) * (hi - lo) + lo).astype(np.float32)
    np.testing.assert_allclose(caffe.io.resize_image(rgb, (9, 7), 1), want, rtol=0, atol=1e-6)
