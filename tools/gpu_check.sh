#!/usr/bin/env bash
# One-shot GPU verification for a device machine (docs/gpu.md, "Running the check"): prints the
# GPU, makes sure CuPy works, runs the gpu-marked tests, then tools/gpu_bench.py (CuPy vs PyTorch,
# FP32 and TF32, 512/1024/2048 px). Everything it prints also lands in $OUT (default ./out):
# gpu_check.log, pytest_gpu.txt, gpu_bench.json, gpu_bench.md. Meant to finish in under 5 minutes.
#
# Exit status: 0 all passed; 1 tests or benchmark failed; 2 cannot run here (no GPU, no CuPy).
# Environment: PYTHON (default: python3), SCRATCHNST_WEIGHTS (default: the first weights/*.h5),
# GPU_CHECK_TEST_TIMEOUT (default 150 s), GPU_CHECK_BENCH_BUDGET (default 120 s).

set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
# The device machine runs this tree without installing it.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
TEST_TIMEOUT="${GPU_CHECK_TEST_TIMEOUT:-150}"
BENCH_BUDGET="${GPU_CHECK_BENCH_BUDGET:-120}"
START=$(date +%s)

say() { echo "gpu_check: $*" | tee -a "$LOG"; }
step() { say "== $* ($(( $(date +%s) - START )) s)"; }

step "GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv 2>&1 | tee -a "$LOG"
else
    say "nvidia-smi not found: this machine shows no NVIDIA driver"
fi
if ! command -v "$PY" >/dev/null 2>&1; then
    say "no Python interpreter '$PY' (set PYTHON=...)"
    exit 2
fi
"$PY" -c 'import sys, numpy; print(sys.executable, sys.version.split()[0], "numpy", numpy.__version__)' 2>&1 | tee -a "$LOG"

step "CuPy"
# The device machines have no network: CuPy must already be there (their image ships
# cupy-cuda13x), or travel as wheels (docs/gpu.md). We never try to install it here.
if ! "$PY" -c 'import cupy' >/dev/null 2>&1; then
    say "CuPy is not importable by $PY, and this script does not install it (device machines have no network)."
    say "Install the extra where there is network: pip install 'scratchnst[gpu]' (CUDA 12 driver) or"
    say "pip install cupy-cuda13x (CUDA 13 driver); on a device machine carry the wheels (docs/gpu.md)."
    exit 2
fi
if ! "$PY" - 2>&1 <<'EOF' | tee -a "$LOG"; then
import sys
import cupy
from scratchnst.core.backend import _probe_cupy

found, why = _probe_cupy()
print("cupy", cupy.__version__, "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion() if found else "-",
      "| driver", cupy.cuda.runtime.driverGetVersion() if found else "-")
if found is None:
    print("CuPy imports but is not usable:", why)
    sys.exit(1)
EOF
    say "CuPy is installed but cannot use a GPU here; stopping."
    exit 2
fi

step "weights"
if [ -z "${SCRATCHNST_WEIGHTS:-}" ]; then
    for f in weights/*.h5; do
        [ -f "$f" ] && export SCRATCHNST_WEIGHTS="$PWD/$f" && break
    done
fi
MARKS="gpu"
# Without either, the cache ($SCRATCHNST_HOME or ~/.cache/scratchnst); never a download.
if found=$("$PY" -c 'from scratchnst.app.files.weights import resolve_weights; print(resolve_weights(fetch=False))' 2>>"$LOG"); then
    export SCRATCHNST_WEIGHTS="$found"
    say "weights: $SCRATCHNST_WEIGHTS (verified)"
else
    say "no verified weights (SCRATCHNST_WEIGHTS='${SCRATCHNST_WEIGHTS:-}', weights/*.h5): the tests that need them are"
    say "deselected and the benchmark is skipped. Carry a copy: see docs/gpu.md."
    unset SCRATCHNST_WEIGHTS
    MARKS="gpu and not weights"
fi

STATUS=0
step "pytest -m '$MARKS' (float32 parity needs TF32 off: CUPY_TF32 unset)"
env -u CUPY_TF32 timeout --kill-after=10 "$TEST_TIMEOUT" "$PY" -m pytest -m "$MARKS" -q -p no:cacheprovider \
    -o addopts="" -rfEs --durations=8 tests 2>&1 | tee "$OUT/pytest_gpu.txt" | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    say "pytest ran past ${TEST_TIMEOUT} s and was stopped"
fi
[ "$rc" -ne 0 ] && STATUS=1
say "pytest exit status $rc"

if [ -n "${SCRATCHNST_WEIGHTS:-}" ]; then
    step "tools/gpu_bench.py (budget ${BENCH_BUDGET} s)"
    timeout --kill-after=10 $(( BENCH_BUDGET + 90 )) "$PY" tools/gpu_bench.py --out "$OUT" --budget-s "$BENCH_BUDGET" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    [ "$rc" -ne 0 ] && STATUS=1
    say "gpu_bench exit status $rc"
fi

step "done, exit status $STATUS; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$STATUS"
