"""Face detection with a real Caffe SSD detector, end to end in ONNX.

libfacedetection's YuFaceDetectNet (an SSD: PriorBox, Normalize, DetectionOutput) is converted to a
standard-op ONNX model — DetectionOutput included — and run in onnxruntime on scikit-image's astronaut photo;
the faces found are drawn and saved as a PNG. ``--backend runtime`` runs the PyTorch runtime instead.

    pip install "prototxt2py[onnx,test]"          # onnxruntime, opencv-python-headless, scikit-image
    python examples/detect_faces.py -o docs/astronaut_faces.png [--onnx yunet.onnx]

The model files are read from the shared corpus next to the checkout (``--prototxt``/``--weights`` to use
others). Rows of DetectionOutput are ``[image, label, score, xmin, ymin, xmax, ymax]`` with corners as
fractions of the image size.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared" / "corpus" / "ShiqiYu__libfacedetection@96a7cc0" / "models" / "caffe"
PROTOTXT = MODEL / "yufacedetectnet-open-v2.prototxt"
WEIGHTS = MODEL / "yufacedetectnet-open-v2.caffemodel"
#: The detector's input: BGR, 0..255, no mean, warped to 320 x 240 (its training transform).
WIDTH, HEIGHT = 320, 240


def astronaut() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins, NASA; public domain) as RGB uint8, 512 x 512."""
    from skimage import data

    return data.astronaut()


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 image as the detector's ``(1, 3, 240, 320)`` float32 BGR input."""
    bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(bgr.astype(np.float32).transpose(2, 0, 1)[None])


def detections(prototxt: Path, weights: Path, blob: np.ndarray, backend: str = "onnx",
               onnx_path: Path | None = None) -> np.ndarray:
    """Every DetectionOutput row ``(K, 7)`` for the input ``blob``, by onnxruntime on the exported model or by
    the PyTorch runtime."""
    import prototxt2py

    net = prototxt2py.load(prototxt, weights=weights, input_shapes={"data": list(blob.shape)})
    if backend == "runtime":
        import torch

        with torch.no_grad():
            return net(torch.from_numpy(blob))["detection_out"].numpy().reshape(-1, 7)
    import onnxruntime as ort

    from prototxt2py.backends.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = onnx_path or Path(tmp) / "detector.onnx"
        export_onnx(net, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(["detection_out"], {"data": blob})
    return out.reshape(-1, 7)


def faces(rows: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The confident face rows (label 1, score >= threshold)."""
    return rows[(rows[:, 1] == 1) & (rows[:, 2] >= threshold)]


def draw(rgb: np.ndarray, rows: np.ndarray, output: Path, size: int = 320) -> None:
    """The image scaled to ``size`` pixels wide with a box and score per row, written as PNG (atomically)."""
    scale = size / rgb.shape[1]
    image = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (size, round(rgb.shape[0] * scale)),
                       interpolation=cv2.INTER_AREA)
    h, w = image.shape[:2]
    for _, _, score, x0, y0, x1, y1 in rows:
        p0 = (round(float(x0) * w), round(float(y0) * h))
        p1 = (round(float(x1) * w), round(float(y1) * h))
        cv2.rectangle(image, p0, p1, (0, 255, 0), 2)
        cv2.putText(image, f"{score:.3f}", (p0[0], max(p0[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 255, 0), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.", delete=False) as f:
        f.write(png.tobytes())
    os.chmod(f.name, 0o644)
    os.replace(f.name, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prototxt", type=Path, default=PROTOTXT)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--backend", choices=("onnx", "runtime"), default="onnx")
    parser.add_argument("--onnx", type=Path, help="also keep the exported ONNX model here")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("-o", "--output", type=Path, default=Path("astronaut_faces.png"))
    args = parser.parse_args()
    rgb = astronaut()
    rows = faces(detections(args.prototxt, args.weights, preprocess(rgb), args.backend, args.onnx), args.threshold)
    for _, _, score, x0, y0, x1, y1 in rows:
        print(f"face {score:.4f}: ({x0:.3f}, {y0:.3f}) - ({x1:.3f}, {y1:.3f})")
    draw(rgb, rows, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
