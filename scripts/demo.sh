#!/usr/bin/env bash
# The README's main job on the bundled AlexNet fixture: summary, diagram, ONNX export and generated PyTorch source
# (into out/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
P=.venv/bin/prototxt2py
$P summary fixtures/alexnet/deploy.prototxt
$P draw fixtures/alexnet/deploy.prototxt out/alexnet.svg --rankdir TB
$P convert fixtures/alexnet/deploy.prototxt --to onnx -o out/alexnet.onnx
$P convert fixtures/alexnet/deploy.prototxt --to python -o out/
echo "wrote out/alexnet.svg, out/alexnet.onnx and out/alexnet.py"
