#!/usr/bin/env bash
# One GPU check, under 10 minutes: TensorRT engines built (fp32, fp16, int8), parity with the torch reference on
# the GPU, the TensorRT tests of tests/test_export.py, and frames/s per batch size and precision with mAP@0.5.
#
#   benchmarks/gpu_check.sh            (from the repository root; uses .venv/bin/python if present)
#
# Exits 2 at once, saying why, where there is no NVIDIA GPU, no TensorRT 10 or no CUDA-enabled torch.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
LIMIT_S="${GPU_CHECK_LIMIT_S:-570}"

fail() {
    echo "gpu_check: $*" >&2
    exit 2
}

command -v nvidia-smi >/dev/null 2>&1 || fail "no NVIDIA driver here (nvidia-smi not found): this check needs an NVIDIA GPU"
nvidia-smi -L >/dev/null 2>&1 || fail "nvidia-smi finds no usable GPU: $(nvidia-smi -L 2>&1 | head -n 1)"
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || fail "torch in $PYTHON does not see the GPU (CPU-only build, or a driver too old for its CUDA)"
"$PYTHON" -c 'import tensorrt, sys; sys.exit(0 if tensorrt.__version__.startswith("10.") else 1)' 2>/dev/null \
    || fail "TensorRT 10 is not importable by $PYTHON: pip install -e '.[tensorrt]'"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
started=$(date +%s)
status=0
timeout "$LIMIT_S" "$PYTHON" benchmarks/gpu_check.py "$@" || status=$?
left=$((LIMIT_S - ($(date +%s) - started)))
if [ "$status" -eq 124 ]; then
    echo "gpu_check: the benchmark ran past ${LIMIT_S} s" >&2
elif [ "$left" -gt 30 ]; then
    echo
    echo "TensorRT tests of tests/test_export.py:"
    timeout "$left" "$PYTHON" -m pytest -q tests/test_export.py -k TensorRT || status=$?
fi
exit "$status"
