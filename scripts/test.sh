#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. CI runs exactly this (see .ci/run).
# The slow model-zoo cases are deselected here; run them with: .venv/bin/pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -m "not slow" -p no:cacheprovider "$@"
