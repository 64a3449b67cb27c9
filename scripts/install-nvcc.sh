#!/usr/bin/env bash
# Installs nvcc and ptxas from pinned PyPI wheels into target/nvcc, where build.rs finds them
# when NVCC, CUDA_HOME, CUDA_PATH and PATH offer none. No GPU or driver is needed to build.
# Every wheel is pinned: unpinned, pip mixes releases and nvcc writes PTX newer than the
# CUDA 13.0 driver loads.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x target/nvcc/nvidia/cu13/bin/nvcc ] && target/nvcc/nvidia/cu13/bin/nvcc --version | grep -q "V13.0.88"; then
    exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --target target/nvcc \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
target/nvcc/nvidia/cu13/bin/nvcc --version | tail -2
