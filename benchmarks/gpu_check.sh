#!/usr/bin/env bash
# The GPU check (issue: "--torch-device cuda"), on a machine with one NVIDIA GPU and a CUDA
# build of torch in the venv; about 3-5 minutes:
#   1. the CUDA unit tests (tests/test_cuda.py, tests/models/test_models_cuda.py, the CUDA
#      draws of tests/test_rng.py): every device preset sweeps on CUDA tensors within 1 accuracy
#      point of the CPU, training on CUDA, the counter-based draws equal on CPU and CUDA
#   2. CPU-vs-GPU agreement of a small sweep with the same models (same rows, accuracies
#      within 1 point)
#   3. the default family on mnist10k at FFW depths 1-13 (DEQ matched): test samples x SNR
#      levels per second on the CPU and the GPU, next to both matmul peaks
# Usage: benchmarks/gpu_check.sh MNIST_DIR   (the directory with the MNIST IDX files)
# The Makefile's venv has the CPU build of torch; on the GPU machine install a CUDA build of
# the same version first, e.g.
#   .venv/bin/python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA_DIR=${1:-}
if [ -z "$DATA_DIR" ] || [ ! -d "$DATA_DIR" ]; then
    echo "gpu_check: error: usage: benchmarks/gpu_check.sh MNIST_DIR (a directory)" >&2
    exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: error: CUDA is not available to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)'))" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "== 1. CUDA unit tests"
timeout 240 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/models/test_models_cuda.py tests/test_rng.py -k "cuda"
echo "== 2-3. CPU vs GPU agreement, throughput on mnist10k"
timeout 240 "$PY" -m benchmarks.gpu_check --device cuda --data-dir "$DATA_DIR"
