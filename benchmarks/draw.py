"""Diagram speed: building and rendering big nets (ResNet-152: 500+ layers) to SVG and PNG.

Run: ``.venv/bin/python benchmarks/draw.py [--all]``. ``--all`` also renders every corpus net to SVG and PNG
and reports failures (the check behind "every corpus net draws"). ``--smoke`` draws LeNet only (seconds; the
tests run it so that the script cannot rot).
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

from prototxt2py.backends.draw import diagram_of, render

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
BIG = [
    "KaimingHe__deep-residual-networks/prototxt/ResNet-152-deploy.prototxt",
    "soeaver__caffe-model/cls/inception/deploy_inception-resnet-v2.prototxt",
    "BVLC__caffe/models/bvlc_googlenet/train_val.prototxt",
]
SMOKE = ["BVLC__caffe/examples/mnist/lenet.prototxt"]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    out = Path(tempfile.mkdtemp())
    print(f"{'net':45} {'layers':>6} {'build':>8} {'svg':>8} {'png':>8} {'svg --no-blobs':>15}")
    for rel in SMOKE if "--smoke" in sys.argv else BIG:
        path = CORPUS / rel
        d = diagram_of(path)
        t_build = timed(lambda path=path: diagram_of(path))
        t_svg = timed(lambda d=d: render(d, out / "a.svg"))
        t_png = timed(lambda d=d: render(d, out / "a.png"))
        compact = diagram_of(path, no_blobs=True)
        t_compact = timed(lambda c=compact: render(c, out / "b.svg"))
        layers = sum(1 for n in d.nodes.values() if n.kind == "layer")
        print(f"{rel.split('/')[-1]:45} {layers:6d} {t_build:7.2f}s {t_svg:7.2f}s {t_png:7.2f}s {t_compact:14.2f}s")
    if "--all" in sys.argv:
        rows = [r for r in csv.DictReader((CORPUS / "MANIFEST.tsv").open(), delimiter="\t")
                if r["format"] in ("V0", "V1", "V2")]
        failed, t0 = [], time.perf_counter()
        for r in rows:
            try:
                d = diagram_of(CORPUS / r["file"])
                render(d, out / "n.svg")
                render(d, out / "n.png")
            except Exception as e:  # report, keep going
                failed.append(f"{r['file']}: {e}")
        print(f"rendered {len(rows) - len(failed)}/{len(rows)} corpus nets to SVG and PNG in "
              f"{time.perf_counter() - t0:.0f}s")
        for f in failed:
            print("  failed:", f)


if __name__ == "__main__":
    main()
