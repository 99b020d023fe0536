#!/usr/bin/env bash
# The GPU paths users run, checked on one CUDA machine in under 10 minutes: one PASS/FAIL line per
# check with its figures, then a summary line. Sized for a bare GPU box that has only Python and
# torch: everything else comes as wheels/sdists in WHEELS_DIR (no network needed).
#
#   bash bench/gpu_check.sh [WHEELS_DIR]        # default: .whl/ in the checkout
#
# WHEELS_DIR holds, for the machine's Python: mmengine, mmdet, pb1_detectron2 (the wheel
# tools/setup_env.sh builds: ~/.cache/us3l/wheels/*/pb1_detectron2-0.6-py3-none-any.whl),
# pycocotools, shapely, addict, yapf, termcolor, terminaltables, tabulate, yacs, iopath, fvcore,
# omegaconf, hydra-core, antlr4-python3-runtime, and mmcv-2.1.0.tar.gz (compiled here WITH its
# CUDA ops, in the background while the other checks run; skip with US3L_GPU_MMCV=0). Where the
# box has no CUDA compiler, also carry NVIDIA's compiler wheels for torch's CUDA (see
# tools/pypi_cuda_toolkit.sh: `pip download --no-deps 'nvidia-cuda-nvcc==13.0.*' ...`, 100 MB).
# Where a package is already installed it is used as it is.
#
# Checks: the CUDA/pytest gpu-marked tests (slimmable forward and an Algorithm 1 step on CUDA vs
# CPU, AMP; one-GPU detectron2 and MMDetection train + evaluate), AMP pretraining through
# tools/pretrain.py, 2-process DDP pretraining on one GPU over gloo and 1-process over NCCL
# (two NCCL ranks cannot share one GPU), conversion with CUDA calibration and verification, the
# linear probe on CUDA against the CPU, and the mmcv CUDA build (time, ops present).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$(cd "${1:-$ROOT/.whl}" 2>/dev/null && pwd || echo "${1:-$ROOT/.whl}")"
WORK="${US3L_GPU_WORK:-/tmp/us3l-gpu}"
PY="${US3L_PYTHON:-python3}"
T0=$SECONDS
rm -rf "$WORK"; mkdir -p "$WORK/site"
cd "$ROOT"
export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg PYTHONUNBUFFERED=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
PASS=0; FAIL=0
report() {  # report NAME STATUS SECONDS FIGURES
  printf '%s %-22s %5ss  %s\n' "$2" "$1" "$3" "$4"
  if [[ "$2" == PASS ]]; then PASS=$((PASS + 1)); else FAIL=$((FAIL + 1)); fi
}
# check NAME COMMAND...: PASS when the command exits 0; figures = its last line starting 'figures:'
check() {
  local name="$1"; shift
  local start=$SECONDS log="$WORK/$name.log"
  if "$@" >"$log" 2>&1; then
    report "$name" PASS $((SECONDS - start)) "$(grep '^figures:' "$log" | tail -1 | cut -c10-)"
  else
    report "$name" FAIL $((SECONDS - start)) "$(grep -v '^\s*$' "$log" | tail -1 | cut -c1-200) (log $log)"
  fi
}

echo "[gpu_check] $("$PY" -c 'import torch, sys; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU"}")')"
"$PY" -c 'import torch; raise SystemExit(0 if torch.cuda.is_available() else 1)' \
  || { echo "FAIL no CUDA device: nothing to check"; exit 1; }

# 0. carried packages (nothing downloaded)
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEELS"/*.whl
  for sdist in "$WHEELS"/fvcore-*.tar.gz "$WHEELS"/antlr4-python3-runtime-*.tar.gz; do
    [[ -f "$sdist" ]] && "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
      --no-compile --target "$WORK/site" "$sdist"
  done
fi
MMCV_PID=""
# No CUDA compiler on the box: NVIDIA's from PyPI when its five wheels were carried (about 100 MB:
# nvidia_cuda_nvcc, _crt, nvidia_nvvm, nvidia_cuda_cccl, _runtime at torch's CUDA version).
if ! "$PY" -c 'from torch.utils.cpp_extension import CUDA_HOME as h; raise SystemExit(0 if h else 1)' 2>/dev/null \
   && ls "$WHEELS"/nvidia_cuda_nvcc-*.whl >/dev/null 2>&1; then
  CUDA_HOME="$(PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELS" bash "$ROOT/tools/pypi_cuda_toolkit.sh" \
    "$PY" "$("$PY" -c 'import torch; print(torch.version.cuda)')" "$WORK/cuda")" && export CUDA_HOME
fi
if [[ "${US3L_GPU_MMCV:-1}" == 1 && -f "$WHEELS/mmcv-2.1.0.tar.gz" ]]; then
  (  # same fix as tools/setup_env.sh: torch >= 2.10 headers need C++20
    set -e; cd "$WORK"; tar xzf "$WHEELS/mmcv-2.1.0.tar.gz"
    sed -i "s/-std=c++17/-std=c++20/g" mmcv-2.1.0/setup.py
    arch="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')"
    start=$SECONDS
    cd mmcv-2.1.0 && MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" \
      MAX_JOBS="${US3L_GPU_MMCV_JOBS:-$(( $(nproc) * 3 / 4 ))}" CFLAGS='-O3 -g0 -DNDEBUG -fwrapv' \
      CXXFLAGS='-O3 -g0 -DNDEBUG' "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/mmcv-wheel" .
    "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "$WORK"/mmcv-wheel/mmcv-*.whl
    echo "built in $((SECONDS - start)) s for sm_${arch/./}" > "$WORK/mmcv.done"
  ) >"$WORK/mmcv-build.log" 2>&1 &
  MMCV_PID=$!
fi
echo "[gpu_check $((SECONDS - T0))s] packages ready; mmcv CUDA build ${MMCV_PID:+running (pid $MMCV_PID)}"

TINY=(--no-progress model.arch=resnet18 model.stem=cifar data.image_size=32 data.num_workers=2
      data.synthetic.train_size=512 data.synthetic.val_size=0 heads.projector.hidden=256
      heads.projector.out=64 heads.distill_head.hidden=256 monitor.knn_every=0 monitor.log_every=5
      monitor.tensorboard=false)
figures_of_run() {  # the pretrainer's summary line and its s/iter
  local dir="$1" secs="$2" iters="$3"
  echo "figures: $(tail -1 "$dir.out" | cut -c1-90); $(awk -v s="$secs" -v n="$iters" 'BEGIN{printf "%.3f s/iter incl. start", s/n}')"
}

amp_pretrain() {
  local s=$SECONDS
  US3L_DEVICE=cuda "$PY" tools/pretrain.py "${TINY[@]}" amp=true data.batch_size=128 \
    schedule.iters=40 output.dir="$WORK/amp" > "$WORK/amp.out" || return 1
  grep -q "last loss nan" "$WORK/amp.out" && return 1
  figures_of_run "$WORK/amp" $((SECONDS - s)) 40
}
ddp_gloo_one_gpu() {
  local s=$SECONDS
  US3L_DEVICE=cuda:0 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 \
    tools/pretrain.py "${TINY[@]}" dist.backend=gloo data.batch_size=32 schedule.iters=8 \
    output.dir="$WORK/ddp-gloo" > "$WORK/ddp-gloo.out" || return 1
  figures_of_run "$WORK/ddp-gloo" $((SECONDS - s)) 8
}
ddp_nccl() {
  local s=$SECONDS
  US3L_DEVICE=cuda "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
    tools/pretrain.py "${TINY[@]}" dist.backend=nccl data.batch_size=32 schedule.iters=8 \
    output.dir="$WORK/ddp-nccl" > "$WORK/ddp-nccl.out" || return 1
  figures_of_run "$WORK/ddp-nccl" $((SECONDS - s)) 8
}
convert_cuda() {
  "$PY" tools/convert_width.py "$WORK/amp/checkpoint.pth" --widths 0.25 0.5 1.0 --device cuda \
    --calib-data synthetic --calib-batches 4 --out "$WORK/export" --quiet || return 1
  "$PY" - "$WORK/export" <<'EOF'
import json, sys, pathlib
errs = {}
for meta in sorted(pathlib.Path(sys.argv[1]).glob("w*/meta.json")):
    m = json.loads(meta.read_text())
    errs[meta.parent.name] = max(m["verification"]["max_rel_error"].values())
print("figures: max relative error static vs slimmable per width " +
      ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
EOF
}
probe_cuda_vs_cpu() {
  local acc=()
  for dev in cuda cpu; do
    US3L_DEVICE=$dev "$PY" tools/linear_probe.py --export "$WORK/export" --widths 0.25 1.0 \
      --datasets digits --image-size 32 --out "$WORK/probe-$dev" > "$WORK/probe-$dev.out" 2>&1 || return 1
  done
  "$PY" - "$WORK" <<'EOF'
import json, sys
rows = {dev: {r["width"]: r["datasets"]["digits"]["value"]
              for r in json.load(open(f"{sys.argv[1]}/probe-{dev}/results.json"))["rows"]}
        for dev in ("cuda", "cpu")}
diff = max(abs(rows["cuda"][w] - rows["cpu"][w]) for w in rows["cpu"])
print("figures: digits top-1 cuda " + ", ".join(f"{w}x {v:.1f}" for w, v in rows["cuda"].items())
      + f"; max |cuda - cpu| {diff:.2f} points")
raise SystemExit(0 if diff <= 1.0 else 1)
EOF
}
gpu_tests() {
  local keep=(-m gpu)
  if [[ ! -f "$WORK/mmcv.done" ]]; then keep+=(-k "not mmdet"); fi
  "$PY" -m pytest -q -p no:cacheprovider "${keep[@]}" tests/test_gpu.py tests/test_detection.py \
    || return 1
  echo "figures: $(grep -E '^[0-9]+ passed' "$WORK/gpu-tests.log" | tail -1)"
}

check amp-pretrain amp_pretrain
check ddp-gloo-2proc-1gpu ddp_gloo_one_gpu
check ddp-nccl-1proc ddp_nccl
check convert-cuda-calib convert_cuda
check probe-cuda-vs-cpu probe_cuda_vs_cpu
if [[ -n "$MMCV_PID" ]]; then
  DEADLINE="${US3L_GPU_MMCV_DEADLINE:-480}"  # seconds since the start
  echo "[gpu_check $((SECONDS - T0))s] waiting for the mmcv CUDA build (until ${DEADLINE}s)"
  while kill -0 "$MMCV_PID" 2>/dev/null && [[ $((SECONDS - T0)) -lt "$DEADLINE" ]]; do sleep 5; done
  if kill -0 "$MMCV_PID" 2>/dev/null; then
    pkill -P "$MMCV_PID" 2>/dev/null; kill "$MMCV_PID" 2>/dev/null
    echo "not finished within ${DEADLINE}s of the start ($(grep -c 'nvcc' "$WORK/mmcv-build.log" 2>/dev/null) nvcc lines logged)" > "$WORK/mmcv-build.log"
  fi
  if [[ -f "$WORK/mmcv.done" ]] && "$PY" -c 'import mmcv.ops as o; assert o.get_compiling_cuda_version() != "not available"' 2>/dev/null; then
    report mmcv-cuda-build PASS 0 "$(cat "$WORK/mmcv.done"); CUDA $("$PY" -c 'import mmcv.ops as o; print(o.get_compiling_cuda_version())')"
  else
    report mmcv-cuda-build FAIL 0 "$(tail -3 "$WORK/mmcv-build.log" | tr '\n' ' ' | cut -c1-200)"
  fi
fi
check gpu-tests gpu_tests
echo "[gpu_check $((SECONDS - T0))s] $PASS passed, $FAIL failed"
[[ "$FAIL" == 0 ]]
