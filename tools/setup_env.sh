#!/usr/bin/env bash
# Build the us3l virtual environment: torch, mmcv WITH compiled ops, mmdet, detectron2, pycocotools.
#
# Why a script and not `pip install -r`: mmcv must be compiled against the installed torch
# (--no-build-isolation) after a one-flag fix (C++17 -> C++20 for torch 2.14's headers), and the
# PyPI detectron2 sdist ships no C++ sources, so it is built without extensions. Compiled wheels
# are cached under $US3L_CACHE (default ~/.cache/us3l) keyed by versions, so a second run is fast.
#
# Layout: the heavy, version-keyed part (torch, engines, every third-party package) is a venv of its
# own under $US3L_CACHE/venvs/base-<key>, built once per machine; the checkout's venv ($US3L_VENV)
# is a small venv that sees that base through a site .pth and holds the project itself
# (`pip install -e .`). A fresh clone therefore sets up in seconds once the base exists.
#
# Environment:
#   US3L_VENV        where the project's venv goes (default: <checkout>/.venv)
#   US3L_CACHE       wheel/sdist cache (default: ~/.cache/us3l)
#   US3L_PYTHON      interpreter for the venv (default: python3.11, else python3)
#   DETECTRON2_SRC   optional: an official detectron2 source tree or wheel (built WITH its ops)
#   US3L_JOBS        parallel compile jobs for mmcv (default: nproc)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${US3L_VENV:-$ROOT/.venv}"
CACHE="${US3L_CACHE:-$HOME/.cache/us3l}"
CONSTRAINTS="$ROOT/constraints.txt"
JOBS="${US3L_JOBS:-$(nproc)}"
PY="${US3L_PYTHON:-$(command -v python3.11 || command -v python3)}"

pin() { grep -E "^$1==" "$CONSTRAINTS" | head -1 | cut -d= -f3; }
TORCH_V="$(pin torch)"; TV_V="$(pin torchvision)"; MMCV_V="$(pin mmcv)"; D2_V="$(pin pb1-detectron2)"
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEELS="$CACHE/wheels/torch${TORCH_V}-${PYTAG}"
mkdir -p "$WHEELS" "$CACHE/sdist"

T0=$SECONDS
step() { printf '\n[setup %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
quiet_pip() { "$VENV/bin/pip" "$@" 2>&1 | grep -v -E "is ignored: it is neither a file nor a directory" || return "${PIPESTATUS[0]}"; }

# What the base depends on: if none of it changed, the base is complete and is reused.
# A machine with an NVIDIA GPU gets a base of its own (mmcv with CUDA ops, see step 3).
GPU_TAG="$( (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1) && echo gpu || echo cpu)"
BASE_KEY="$(cat "$CONSTRAINTS" "$ROOT/tools/setup_env.sh" | sha256sum | cut -c1-12)-${PYTAG}-$(echo "${DETECTRON2_SRC:-pypi}" | sha256sum | cut -c1-6)-${GPU_TAG}"
BASE="$CACHE/venvs/base-$BASE_KEY"
STAMP_KEY="$BASE_KEY-$(cat "$ROOT/setup.cfg" | sha256sum | cut -c1-8)"
if [[ -f "$VENV/.us3l-stamp" && "$(cat "$VENV/.us3l-stamp")" == "$STAMP_KEY" ]] \
   && "$VENV/bin/python" -c "import torch, mmcv.ops, mmdet, detectron2, pycocotools, pretrain, transfer" 2>/dev/null; then
  step "environment $VENV is up to date (stamp $STAMP_KEY)"; exit 0
fi

PROJECT_VENV="$VENV"
VENV="$BASE"   # steps 1-5 build the shared base; the project's venv is layered on it afterwards
if [[ -f "$BASE/.us3l-base-complete" ]]; then
  step "1-5/6 reusing the built base environment $BASE"
else
step "1/6 base virtual environment at $BASE ($PY)"
rm -rf "$BASE"
"$PY" -m venv "$BASE"
quiet_pip install -q -c "$CONSTRAINTS" "setuptools" wheel ninja

step "2/6 torch==$TORCH_V torchvision==$TV_V"
quiet_pip install -q -c "$CONSTRAINTS" "torch==$TORCH_V" "torchvision==$TV_V"

# mmcv's ops are compiled for the CPU, and also for CUDA where this machine has a GPU and a CUDA
# compiler (CUDA_HOME or nvcc on PATH, matching torch's CUDA): MMDetection's RoIAlign and NMS on a
# GPU need them. The cached wheel's folder says which (a CPU wheel reused on a GPU machine would
# leave MMDetection unable to run there): $WHEELS for the CPU, $WHEELS-cu<ver>-sm<archs> for CUDA.
mmcv_target() {  # "cu<ver> <archs>" | "nocompiler -" | "cpu -"
"$VENV/bin/python" - <<'PYEOF'
import torch
from torch.utils.cpp_extension import CUDA_HOME
if torch.version.cuda and torch.cuda.is_available() and CUDA_HOME:
    archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i)
                    for i in range(torch.cuda.device_count())})
    print("cu" + torch.version.cuda.replace(".", ""), ";".join(archs))
elif torch.cuda.is_available():
    print("nocompiler", "-")
else:
    print("cpu", "-")
PYEOF
}
read -r MMCV_CUDA MMCV_ARCHS < <(mmcv_target)
# A GPU but no CUDA compiler: NVIDIA's compiler from PyPI at torch's CUDA version
# (tools/pypi_cuda_toolkit.sh; US3L_PYPI_CUDA=0 turns this off).
if [[ "$MMCV_CUDA" == nocompiler && "${US3L_PYPI_CUDA:-1}" == 1 ]]; then
  CUDA_VER="$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda)')"
  if PYPI_CUDA_HOME="$(bash "$ROOT/tools/pypi_cuda_toolkit.sh" "$VENV/bin/python" "$CUDA_VER" \
        "$CACHE/cuda-$CUDA_VER")"; then
    export CUDA_HOME="$PYPI_CUDA_HOME"
    echo "  no CUDA compiler on this machine: using NVIDIA's CUDA $CUDA_VER compiler from PyPI ($CUDA_HOME)"
    read -r MMCV_CUDA MMCV_ARCHS < <(mmcv_target)
  fi
fi
MMCV_DIR="$WHEELS"; MMCV_ENV=(FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=)
if [[ "$MMCV_CUDA" == cu* ]]; then
  MMCV_DIR="$WHEELS-$MMCV_CUDA-sm$(echo "$MMCV_ARCHS" | tr -d '.' | tr ';' '_')"
  MMCV_ENV=(FORCE_CUDA=1 "TORCH_CUDA_ARCH_LIST=$MMCV_ARCHS"); mkdir -p "$MMCV_DIR"
elif [[ "$MMCV_CUDA" == nocompiler ]]; then
  echo "  warning: this machine has a GPU but no usable CUDA compiler (set CUDA_HOME or put CUDA" \
       "$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda)')'s nvcc on PATH): mmcv is" \
       "built without CUDA ops, so MMDetection runs on the CPU only (train_det.sh says so)"
fi
step "3/6 mmcv==$MMCV_V with compiled ops, ${MMCV_CUDA/nocompiler/cpu}${MMCV_ARCHS/-/} (cached in $MMCV_DIR)"
MMCV_WHEEL="$(ls "$MMCV_DIR"/mmcv-"$MMCV_V"-*.whl 2>/dev/null | head -1 || true)"
if [[ -z "$MMCV_WHEEL" ]]; then
  BUILD="$(mktemp -d)"
  quiet_pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$CACHE/sdist" "mmcv==$MMCV_V"
  tar xzf "$CACHE/sdist/mmcv-$MMCV_V.tar.gz" -C "$BUILD"
  # torch >= 2.10 headers need C++20; mmcv hard-codes C++17.
  sed -i "s/-std=c++17/-std=c++20/g" "$BUILD/mmcv-$MMCV_V/setup.py"
  echo "  compiling mmcv ops with $JOBS jobs (CPU: about 7-10 min on 2 cores, once)..."
  ( cd "$BUILD/mmcv-$MMCV_V" && env "${MMCV_ENV[@]}" MMCV_WITH_OPS=1 MAX_JOBS="$JOBS" \
      CFLAGS='-O3 -g0 -DNDEBUG -fwrapv' CXXFLAGS='-O3 -g0 -DNDEBUG' \
      "$VENV/bin/pip" wheel -q --no-build-isolation --no-deps -w "$BUILD/out" . )
  mv "$BUILD"/out/mmcv-*.whl "$MMCV_DIR/" && rm -rf "$BUILD"
  MMCV_WHEEL="$(ls "$MMCV_DIR"/mmcv-"$MMCV_V"-*.whl | head -1)"
fi
quiet_pip install -q -c "$CONSTRAINTS" --no-deps "$MMCV_WHEEL"
quiet_pip install -q -c "$CONSTRAINTS" addict packaging Pillow pyyaml yapf opencv-python-headless

step "4/6 detectron2"
if [[ -n "${DETECTRON2_SRC:-}" ]]; then
  echo "  official detectron2 from $DETECTRON2_SRC (with its compiled ops)"
  quiet_pip install -q -c "$CONSTRAINTS" --no-build-isolation "$DETECTRON2_SRC"
else
  D2_WHEEL="$(ls "$WHEELS"/pb1_detectron2-"$D2_V"-*.whl 2>/dev/null | head -1 || true)"
  if [[ -z "$D2_WHEEL" ]]; then
    BUILD="$(mktemp -d)"
    quiet_pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$CACHE/sdist" "pb1-detectron2==$D2_V"
    tar xzf "$CACHE/sdist/pb1-detectron2-$D2_V.tar.gz" -C "$BUILD"
    # The sdist lacks detectron2/layers/csrc: build no extension (transfer/detectron2/compat.py
    # stands in for _C), and package the model-zoo configs that the sdist does carry.
    "$VENV/bin/python" - "$BUILD/pb1-detectron2-$D2_V/setup.py" <<'PYEOF'
import sys, re
p = sys.argv[1]; s = open(p).read()
s = s.replace("ext_modules=get_extensions(),", "ext_modules=[],")
s = s.replace('package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
              'package_data={"detectron2.model_zoo": ["configs/*.yaml", "configs/**/*.yaml", "configs/**/*.py"]},')
s = s.replace('"black==21.4b2",', '')
open(p, "w").write(s)
PYEOF
    ( cd "$BUILD/pb1-detectron2-$D2_V" && "$VENV/bin/pip" wheel -q --no-build-isolation --no-deps -w "$BUILD/out" . )
    mv "$BUILD"/out/pb1_detectron2-*.whl "$WHEELS/" && rm -rf "$BUILD"
    D2_WHEEL="$(ls "$WHEELS"/pb1_detectron2-"$D2_V"-*.whl | head -1)"
  fi
  quiet_pip install -q -c "$CONSTRAINTS" "$D2_WHEEL"
fi

step "5/6 mmengine, mmdet, pycocotools and the project's own dependencies"
quiet_pip install -q -c "$CONSTRAINTS" mmengine mmdet pycocotools scipy scikit-learn matplotlib \
  pyyaml tqdm tensorboard pytest pytest-xdist onnx onnxruntime onnxscript
touch "$BASE/.us3l-base-complete"
fi

step "6/6 project environment $PROJECT_VENV on top of the base, pip install -e ., check"
VENV="$PROJECT_VENV"
if [[ ! -x "$VENV/bin/python" ]] || ! grep -q "$BASE" "$VENV"/lib/python3*/site-packages/us3l-base.pth 2>/dev/null; then
  [[ ! -e "$VENV" || -f "$VENV/pyvenv.cfg" ]] || { echo "refusing to replace $VENV: not a virtual environment" >&2; exit 2; }
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  BASE_SITE="$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import site; site.addsitedir('$BASE_SITE')" > "$SITE/us3l-base.pth"
  # Console scripts of the base, run by this venv's interpreter (so they see the project too).
  for tool in torchrun pytest; do
    printf '#!/usr/bin/env bash\nexec "%s" -m %s "$@"\n' "$VENV/bin/python" \
      "$(case $tool in torchrun) echo torch.distributed.run;; *) echo $tool;; esac)" \
      > "$VENV/bin/$tool"
    chmod +x "$VENV/bin/$tool"
  done
fi
quiet_pip install -q -c "$CONSTRAINTS" --no-deps --no-build-isolation -e "$ROOT"

"$VENV/bin/python" - <<'PYEOF'
import torch, torchvision, mmcv, mmdet, mmengine, pycocotools
from mmcv.ops import nms, RoIAlign  # compiled ops must be present
import transfer.detectron2.compat  # noqa: F401  (detectron2 through the compat layer)
import detectron2
print(f"  torch {torch.__version__}  torchvision {torchvision.__version__}  mmcv {mmcv.__version__}"
      f"  mmengine {mmengine.__version__}  mmdet {mmdet.__version__}  detectron2 {detectron2.__version__}"
      f"  (ops: {'compiled' if transfer.detectron2.compat.HAS_COMPILED_OPS else 'torchvision stand-ins'})")
PYEOF
echo "$STAMP_KEY" > "$VENV/.us3l-stamp"
step "done: $VENV"
