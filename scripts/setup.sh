#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: Graphviz's `dot`, a virtualenv with the CPU build of
# PyTorch 2.13.0 (never a CUDA build), and this package with its test extras, in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dot >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq graphviz >/dev/null
  else
    echo "warning: Graphviz 'dot' not found; install the graphviz package to render diagrams" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first and pinned to the tested CPU build, so that no later requirement can pull a multi-GB CUDA wheel;
# the package itself only asks for a range (pyproject.toml), which this build satisfies and pip then keeps.
# Set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index on machines that do not already have the CPU wheel.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
