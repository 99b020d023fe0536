#!/usr/bin/env bash
# A CUDA compiler from PyPI, for a GPU machine that has none: prints a CUDA_HOME that can compile
# torch extensions (mmcv's CUDA ops) for torch's own CUDA version.
#
# Usage: tools/pypi_cuda_toolkit.sh PYTHON CUDA_VERSION DEST   e.g. .venv/bin/python 13.0 ~/.cache/us3l/cuda-13.0
#
# Why these wheels: NVIDIA publishes the toolkit's parts on PyPI. nvcc alone is not enough; a
# torch extension also needs the crt headers, NVVM (cicc), CCCL (<nv/target>, included by
# cuda_fp16.h) and the runtime's headers, all at torch's CUDA major.minor. They are installed
# into one prefix so that DEST/nvidia/cu<major> is laid out like a CUDA_HOME (bin, include, lib,
# nvvm); only the linker's unversioned libcudart.so is missing from the runtime wheel, and it is
# added as a link, as are the headers of the CUDA libraries torch itself was installed with. Checked on a CPU machine: a CUDA kernel extension for sm_90 compiled and
# linked against torch 2.14.1+cu130 with this prefix, and so did mmcv 2.1.0's CUDA NMS and RoIAlign
# sources (see tools/setup_env.sh, step 3).
set -euo pipefail
PY="$1"; VER="$2"; DEST="$3"
MAJOR="${VER%%.*}"
if [[ "$MAJOR" -lt 13 ]]; then  # CUDA 12's wheels install each part in a folder of its own
  echo "CUDA $VER: the PyPI toolkit forms one CUDA_HOME only from CUDA 13 on; install CUDA $VER's nvcc" >&2
  exit 1
fi
HOME_DIR="$DEST/nvidia/cu$MAJOR"
if [[ ! -x "$HOME_DIR/bin/nvcc" || ! -e "$DEST/.complete" ]]; then
  rm -rf "$DEST"
  "$PY" -m pip install -q --no-deps --target "$DEST" \
    "nvidia-cuda-nvcc==$VER.*" "nvidia-cuda-crt==$VER.*" "nvidia-nvvm==$VER.*" \
    "nvidia-cuda-cccl==$VER.*" "nvidia-cuda-runtime==$VER.*" >&2
  lib="$(ls "$HOME_DIR"/lib/libcudart.so.* 2>/dev/null | head -1 || true)"
  [[ -n "$lib" && ! -e "$HOME_DIR/lib/libcudart.so" ]] && ln -s "$(basename "$lib")" "$HOME_DIR/lib/libcudart.so"
  # torch's own CUDA headers (cuBLAS, cuSPARSE, cuSOLVER, ... from the nvidia-* wheels torch was
  # installed with; ATen/cuda/CUDAContext.h includes them) join the prefix as links.
  torch_inc="$("$PY" -c "import os, nvidia; print(next((os.path.join(p, 'cu$MAJOR', 'include') for p in nvidia.__path__ if os.path.isdir(os.path.join(p, 'cu$MAJOR', 'include'))), ''))")"
  [[ -n "$torch_inc" ]] && cp -rsn "$torch_inc"/. "$HOME_DIR/include/"
  touch "$DEST/.complete"
fi
echo "$HOME_DIR"
