#!/usr/bin/env bash
# The GPU checks of issue 21 in one run, on a machine with a CUDA GPU and a CUDA build of torch (>= 2.5):
#   1. every golden case of ../shared/golden (layers and mixed nets with their gradients, trained nets, the zoo
#      with its slow cases, solver trajectories, pycaffe's solvers) with blobs and inputs on the GPU
#      (PROTOTXT2PY_TEST_DEVICE);
#   2. the zoo through the plan an eval-mode forward runs on the GPU (folds, no per-step tests), a net moved to
#      the GPU inside torch.inference_mode(), and half precision/autocast against Caffe;
#   3. eager forward latency of the runtime, and of its CUDA-graph replay (CaffeNet.cuda_graph, also checked against
#      Caffe in 1.), against the hand-written AlexNet and ResNet-50, batch 1, 16 and 64.
#
#   bash scripts/gpu_checks.sh --prepare   # here: copy the shared data the checks read into ./shared (~55 MB)
#   bash scripts/gpu_checks.sh             # there, from the checkout: logs into $OUT (else ./gpu-checks)
#   PROTOTXT2PY_TEST_DEVICE=cpu PYTHON=.venv/bin/python BENCH_ARGS="--smoke --parts forward" \
#       bash scripts/gpu_checks.sh -k lenet   # a dry run on the CPU (tests/test_gpu_checks_script.py)
# Arguments go to pytest; BENCH_ARGS replaces the benchmark's "--parts forward --batches 1 16 64 --rounds 15".
#
# A GPU machine often sees only the checkout, not ../shared: --prepare puts a copy inside it (./shared is
# git-ignored). The checks use the machine's own python3 (PYTHON=... to choose) and import this package from the
# checkout, so nothing is installed there.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    rm -rf shared && mkdir -p shared/golden
    cp -r ../shared/corpus shared/
    cp -r ../shared/golden/{README.md,layers,nets,zoo,solvers} shared/golden/
    [[ -d ../shared/golden/mixed ]] && cp -r ../shared/golden/mixed shared/golden/
    du -sh shared
    exit 0
fi

PY=${PYTHON:-python3}
LOGS=${OUT:-gpu-checks}
mkdir -p "$LOGS"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PROTOTXT2PY_TEST_DEVICE=${PROTOTXT2PY_TEST_DEVICE:-cuda}
if [[ -z "${PROTOTXT2PY_SHARED:-}" && ! -d ../shared/golden && -d shared/golden ]]; then
    export PROTOTXT2PY_SHARED=$PWD/shared
fi
"$PY" -c "import torch; d = torch.device('$PROTOTXT2PY_TEST_DEVICE'); \
assert d.type != 'cuda' or torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name(d) if d.type == 'cuda' else d)" || exit 1

status=0
"$PY" -m pytest -q -p no:cacheprovider -m "" -o addopts="" \
    tests/test_golden_layers.py tests/test_golden_nets.py tests/test_train_golden.py tests/test_pycaffe_solver.py \
    tests/test_runtime.py::test_inference_plan_matches_caffe_on_the_zoo \
    tests/test_inference_mode.py tests/test_precision.py tests/test_cuda_graph.py tests/test_rpn_proposal.py tests/test_multibox_loss.py "$@" 2>&1 | tee "$LOGS/golden.txt" || status=1
BENCH_ARGS=${BENCH_ARGS:---parts forward --batches 1 16 64 --rounds 15}
# shellcheck disable=SC2086  # BENCH_ARGS: several words
"$PY" benchmarks/runtime.py --device "$PROTOTXT2PY_TEST_DEVICE" $BENCH_ARGS 2>&1 | tee "$LOGS/forward.txt" || status=1
exit $status
