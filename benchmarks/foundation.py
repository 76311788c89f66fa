"""Parse + upgrade + shape inference of the largest corpus nets, against protobuf's own text parser.

Run: ``.venv/bin/python benchmarks/foundation.py`` (``--smoke``: LeNet, one run, for the tests). Prints
per-net timings (best of N runs) and the ratio of our full pipeline (location-aware parse, upgrade, IR, shapes)
to a bare ``google.protobuf.text_format.Parse`` of the same file measured in the same run (the floor any Python
tool pays to read the text).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from google.protobuf import text_format

import prototxt2py
from prototxt2py import textformat
from prototxt2py.proto import caffe_pb2
from prototxt2py.reader import read_net

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
NETS = [
    "soeaver__caffe-model/cls/inception/deploy_inception-resnet-v2.prototxt",
    "soeaver__caffe-model/cls/inception/deploy_inception-v4.prototxt",
    "hszhao__PSPNet/evaluation/prototxt/pspnet101_VOC2012_473.prototxt",
    "KaimingHe__deep-residual-networks/prototxt/ResNet-152-deploy.prototxt",
    "BVLC__caffe@11a4c16/models/bvlc_googlenet/deploy.prototxt",  # V1: includes the upgrade
]
SMOKE = ["BVLC__caffe/examples/mnist/lenet.prototxt"]
RUNS = 1 if "--smoke" in sys.argv else 5


def best(fn, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    rows = []
    for rel in SMOKE if "--smoke" in sys.argv else NETS:
        path = CORPUS / rel
        if not path.exists():
            continue
        text = path.read_text()

        def protobuf_parse(text: str = text) -> None:
            try:
                text_format.Parse(text, caffe_pb2.NetParameter())
            except text_format.ParseError:  # fork fields: protobuf cannot parse the file at all
                text_format.Parse(text, caffe_pb2.NetParameter(), allow_unknown_field=True)

        def ours_parse(text: str = text, path: Path = path) -> None:
            textformat.parse(text, caffe_pb2.NetParameter(), str(path))

        def full(path: Path = path) -> None:
            prototxt2py.graph(read_net(path), allow_unknown_types=True)

        g = prototxt2py.graph(read_net(path), allow_unknown_types=True)
        t_pb, t_parse, t_full = best(protobuf_parse), best(ours_parse), best(full)
        rows.append((rel.split("/")[-1], len(text) // 1024, len(g.nodes), t_pb, t_parse, t_full))
    print(f"{'net':42} {'KiB':>5} {'layers':>6} {'protobuf':>9} {'our parse':>9} {'full IR':>9} {'full/pb':>7}")
    for name, kib, n, t_pb, t_parse, t_full in rows:
        print(f"{name:42} {kib:5d} {n:6d} {t_pb * 1e3:7.1f}ms {t_parse * 1e3:7.1f}ms {t_full * 1e3:7.1f}ms "
              f"{t_full / t_pb:6.2f}x")
    print("full IR = read + location-aware parse + upgrade + NetState filter + IR + shape inference")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
