#!/usr/bin/env bash
# Fine-tune and evaluate one exported width in detectron2 or MMDetection, with the engine's own
# launcher, and write metrics.json (one schema for both engines) in --out.
#
#   tools/train_det.sh ENGINE TASK EXPORT_DIR [--gpus N | --cpu-procs N] [--out DIR] [options] [extra engine options]
#
#   ENGINE        detectron2 | mmdet
#   TASK          voc  (Faster R-CNN R-FPN, VOC07+12 trainval -> VOC07 test, AP/AP50/AP75 VOC07 metric)
#                 coco (Mask R-CNN R-FPN 1x, COCO 2017 train -> val, box and mask AP)
#   EXPORT_DIR    a folder written by tools/convert_width.py (meta.json + detectron2.pkl/mmdet.pth)
#   --gpus N      processes (GPUs) per machine (default 1; one process degrades SyncBN to BN).
#                 Whatever N is, a run keeps the protocol's total batch 16 and lr 0.02: each GPU
#                 gets 16/N images (transfer/detection/protocol.py)
#   --cpu-procs N N processes on the CPU over gloo, started by torchrun (tests, debugging; SyncBN
#                 becomes an all-reduce naive SyncBN)
#   --total-batch B  images per optimizer step (default 16); the lr scales linearly (0.02 x B/16)
#                 unless given explicitly (detectron2 SOLVER.BASE_LR, mmdet optim_wrapper.optimizer.lr)
#   --ims-per-gpu M  at most M images per process and forward: the rest by gradient accumulation
#   --out DIR     run folder (default runs/det/ENGINE_TASK_<checkpoint sha8>_w<width>):
#                 DIR/metrics.json, DIR/run.json (what the run was started from), and the
#                 engine's own logs, config and checkpoints in DIR/ENGINE/
#   --nnodes M --node-rank R --dist-url tcp://HOST:PORT   multi-machine (same command on each)
#   --config FILE a config other than configs/{detectron2,mmdet}/*_us3l.* for the export's arch
#                 (detectron2: read as safe YAML; mmdet: a Python file the engine executes, so
#                 pass only configs you trust)
#   --eval-only   evaluate without training (the heads stay untrained: the baseline); with
#                 --resume: evaluate the run's last checkpoint in DIR/ENGINE/ (there must be one)
#   --resume      continue from the last checkpoint in DIR/ENGINE/ (only a run of the same engine,
#                 task and export: anything else exits 2 naming both; a DIR without run.json
#                 holds nothing to resume and exits 2)
#   anything else goes to the engine: detectron2 KEY VALUE pairs (e.g. SOLVER.MAX_ITER 100),
#   mmdet --cfg-options key=value ..., --max-iters N (an N-iteration schedule) and --img-scale W H.
#
# Data: $DETECTRON2_DATASETS/{VOC2007,VOC2012,coco} for both engines (default ./datasets).
# Python: $US3L_VENV/bin/python (default <repo>/.venv).
# Bad input (an option, the export folder and its files, the data root, the run folder): one
# line on stderr, exit 2, checked before any engine or worker starts; no run folder is claimed.
# An export file that holds anything but plain data and weights is refused before an engine
# reads it (nothing from it runs). Exit statuses: 0 done, 2 bad input, 130/143 interrupted.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${US3L_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
USAGE="usage: tools/train_det.sh ENGINE TASK EXPORT_DIR [--gpus N | --cpu-procs N] [--total-batch B] [--ims-per-gpu M] [--out DIR] [--nnodes M --node-rank R --dist-url tcp://HOST:PORT] [--config FILE] [--eval-only] [--resume] [extra engine options]"

die() { echo "train_det.sh: error: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value; $USAGE"; }
is_int() { [[ "$1" =~ ^(0|[1-9][0-9]{0,8})$ ]]; }  # no leading zeros (octal), no overflow

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
[[ $# -ge 3 ]] || die "expected ENGINE TASK EXPORT_DIR; $USAGE"
ENGINE="$1"; TASK="$2"; EXPORT="$3"; shift 3
case "$ENGINE" in detectron2|mmdet) ;; *) die "unknown ENGINE '$ENGINE'; expected detectron2 or mmdet" ;; esac
case "$TASK" in voc|coco) ;; *) die "unknown TASK '$TASK'; expected voc or coco" ;; esac
[[ -x "$PY" ]] || die "no python at $PY; build the environment with tools/setup_env.sh or set US3L_VENV"

GPUS=1; CPU_PROCS=""; NNODES=1; NODE_RANK=0; DIST_URL=""; OUT=""; CONFIG=""; EVAL_ONLY=0; RESUME=0
TOTAL_BATCH=""; IMS_PER_GPU=""; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) need_value "$@"; GPUS="$2"; shift 2 ;;
    --cpu-procs) need_value "$@"; CPU_PROCS="$2"; shift 2 ;;
    --total-batch) need_value "$@"; TOTAL_BATCH="$2"; shift 2 ;;
    --ims-per-gpu) need_value "$@"; IMS_PER_GPU="$2"; shift 2 ;;
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --nnodes) need_value "$@"; NNODES="$2"; shift 2 ;;
    --node-rank) need_value "$@"; NODE_RANK="$2"; shift 2 ;;
    --dist-url) need_value "$@"; DIST_URL="$2"; shift 2 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --eval-only) EVAL_ONLY=1; shift ;;
    --resume) RESUME=1; shift ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
is_int "$GPUS" && [[ "$GPUS" -ge 1 ]] || die "--gpus '$GPUS' is not a positive integer"
[[ -z "$CPU_PROCS" ]] || { is_int "$CPU_PROCS" && [[ "$CPU_PROCS" -ge 1 ]]; } || die "--cpu-procs '$CPU_PROCS' is not a positive integer"
CPU_PROCS="${CPU_PROCS:-0}"
[[ "$CPU_PROCS" -eq 0 || "$GPUS" -eq 1 ]] || die "pass --gpus or --cpu-procs, not both"
[[ -z "$TOTAL_BATCH" ]] || { is_int "$TOTAL_BATCH" && [[ "$TOTAL_BATCH" -ge 1 ]]; } || die "--total-batch '$TOTAL_BATCH' is not a positive integer"
[[ -z "$IMS_PER_GPU" ]] || { is_int "$IMS_PER_GPU" && [[ "$IMS_PER_GPU" -ge 1 ]]; } || die "--ims-per-gpu '$IMS_PER_GPU' is not a positive integer"
is_int "$NNODES" && [[ "$NNODES" -ge 1 ]] || die "--nnodes '$NNODES' is not a positive integer"
is_int "$NODE_RANK" && [[ "$NODE_RANK" -lt "$NNODES" ]] || die "--node-rank '$NODE_RANK' must be in [0, $NNODES)"
if [[ "$NNODES" -gt 1 && -z "$DIST_URL" ]]; then die "--nnodes $NNODES needs --dist-url tcp://HOST:PORT (the rank-0 machine)"; fi
if [[ -n "$DIST_URL" && ! "$DIST_URL" =~ ^tcp://[^:/]+:[0-9]+$ ]]; then die "--dist-url '$DIST_URL' must look like tcp://HOST:PORT"; fi
if [[ -n "$CONFIG" && ! -f "$CONFIG" ]]; then die "config $CONFIG does not exist"; fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
COMMON=(--task "$TASK" --export "$EXPORT")
[[ -n "$OUT" ]] && COMMON+=(--out "$OUT")
[[ -n "$CONFIG" ]] && COMMON+=(--config "$CONFIG")
[[ -n "$TOTAL_BATCH" ]] && COMMON+=(--total-batch "$TOTAL_BATCH")
[[ -n "$IMS_PER_GPU" ]] && COMMON+=(--ims-per-gpu "$IMS_PER_GPU")
[[ "$EVAL_ONLY" == 1 ]] && COMMON+=(--eval-only)
[[ "$RESUME" == 1 ]] && COMMON+=(--resume)

PROCS=$GPUS
if [[ "$CPU_PROCS" -ge 1 ]]; then PROCS=$CPU_PROCS; fi
# The CPU, by --cpu-procs or by US3L_DEVICE=cpu (pretrain/device.py; the test suite sets it): no
# engine may pick a GPU on its own.
if [[ "$CPU_PROCS" -ge 1 || "${US3L_DEVICE:-auto}" == cpu ]]; then
  COMMON+=(--device cpu); export CUDA_VISIBLE_DEVICES=""
fi

# detectron2 on GPUs: its own launcher (it spawns the workers after one check in the parent).
if [[ "$ENGINE" == detectron2 && "$CPU_PROCS" -eq 0 ]]; then
  DIST=(--num-gpus "$GPUS" --num-machines "$NNODES" --machine-rank "$NODE_RANK")
  [[ -n "$DIST_URL" ]] && DIST+=(--dist-url "$DIST_URL")
  exec "$PY" "$ROOT/tools/train_detectron2.py" "${COMMON[@]}" "${DIST[@]}" "${EXTRA[@]}"
fi

if [[ $((PROCS * NNODES)) -gt 1 ]]; then
  # Export folder, data layout, GPU count, batch split and run folder are checked (and run.json
  # recorded) once here, before torchrun starts the workers.
  PRE=(--world "$((PROCS * NNODES))")
  [[ -n "$OUT" ]] && PRE+=(--out "$OUT")
  [[ "$CPU_PROCS" -ge 1 ]] && PRE+=(--cpu) || PRE+=(--gpus "$GPUS")
  [[ -n "$TOTAL_BATCH" ]] && PRE+=(--total-batch "$TOTAL_BATCH")
  [[ -n "$IMS_PER_GPU" ]] && PRE+=(--ims-per-gpu "$IMS_PER_GPU")
  [[ "$RESUME" == 1 ]] && PRE+=(--resume)
  [[ "$EVAL_ONLY" == 1 ]] && PRE+=(--eval-only)
  OUT="$("$PY" -m transfer.detection.preflight "$ENGINE" "$TASK" "$EXPORT" "${PRE[@]}")" || exit $?
  [[ " ${COMMON[*]} " == *" --out "* ]] || COMMON+=(--out "$OUT")
  HOSTPORT="${DIST_URL#tcp://}"
  MASTER_ADDR="${HOSTPORT%:*}"; MASTER_PORT="${HOSTPORT##*:}"
  [[ -n "$DIST_URL" ]] || { MASTER_ADDR=127.0.0.1; MASTER_PORT=$((29500 + RANDOM % 1000)); }
  ENTRY="$ROOT/tools/train_mmdet.py"; LAUNCHER=(--launcher pytorch)
  [[ "$ENGINE" == detectron2 ]] && { ENTRY="$ROOT/tools/train_detectron2.py"; LAUNCHER=(); }
  exec "$PY" -m torch.distributed.run --nproc_per_node "$PROCS" --nnodes "$NNODES" \
    --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    "$ENTRY" "${COMMON[@]}" "${LAUNCHER[@]}" "${EXTRA[@]}"
fi
exec "$PY" "$ROOT/tools/train_mmdet.py" "${COMMON[@]}" --launcher none "${EXTRA[@]}"
