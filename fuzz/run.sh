#!/usr/bin/env bash
# Bounded-time fuzzing of every target, seeded from ../shared/corpus.
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default 600 s; targets: parse binary draw onnx run)
# Work files go to fuzz/out/ (git-ignored): the growing corpus per target, crash/timeout/oom artifacts and a
# log. A finding is reproduced with `python fuzz/harness.py TARGET fuzz/out/TARGET/crash-...`; once fixed,
# copy the input to fuzz/regressions/TARGET/ so that tests/test_hostile_regressions.py replays it in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(parse binary draw onnx run)
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=fuzz/out
mkdir -p "$OUT"
"$PY" fuzz/seeds.py "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PROTOTXT2PY_DEBUG=1
for t in "${TARGETS[@]}"; do
  mkdir -p "$OUT/$t/corpus" "$OUT/$t/artifacts"
  case "$t" in
    binary) seeds="$OUT/seeds-binary"; maxlen=400000 ;;
    parse) seeds="$OUT/seeds-text $OUT/seeds-small"; maxlen=65536 ;;
    *) seeds="$OUT/seeds-small"; maxlen=8192 ;;  # small nets: many executions per second where each is slow
  esac
  echo "== $t: ${SECONDS_PER_TARGET}s"
  # An input over 10 s is a hang (the harness's watchdog: FUZZ_HANG_SECONDS; the harness pushes atheris's and
  # libFuzzer's SIGALRM timeouts out of reach, see _without_alarm_timeout); -rss_limit_mb: a memory blow-up.
  # Both are findings.
  "$PY" fuzz/harness.py "$t" -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=3072 \
    -max_len="$maxlen" -dict="$OUT/caffe.dict" -print_final_stats=1 -close_fd_mask=1 \
    -artifact_prefix="$OUT/$t/artifacts/" "$OUT/$t/corpus" $seeds 2>&1 | tee "$OUT/$t.log" | \
    grep -E "^#[0-9]+.*(pulse|DONE)|stat::|ERROR|Traceback|==" || true
done
