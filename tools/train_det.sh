#!/usr/bin/env bash
# Fine-tune and evaluate one exported width in detectron2 or MMDetection, with the engine's own
# launcher, and write metrics.json (one schema for both engines) in --out.
#
#   tools/train_det.sh ENGINE TASK EXPORT_DIR [--gpus N] [--out DIR] [options] [extra engine options]
#
#   ENGINE        detectron2 | mmdet
#   TASK          voc  (Faster R-CNN R-FPN, VOC07+12 trainval -> VOC07 test, AP/AP50/AP75 VOC07 metric)
#                 coco (Mask R-CNN R-FPN 1x, COCO 2017 train -> val, box and mask AP)
#   EXPORT_DIR    a folder written by tools/convert_width.py (meta.json + detectron2.pkl/mmdet.pth)
#   --gpus N      processes (GPUs) per machine (default 1; one process degrades SyncBN to BN)
#   --out DIR     run folder (default runs/det/ENGINE_TASK_<export name>): DIR/metrics.json, and the
#                 engine's own logs, config and checkpoints in DIR/ENGINE/
#   --nnodes M --node-rank R --dist-url tcp://HOST:PORT   multi-machine (same command on each)
#   --config FILE a config other than configs/{detectron2,mmdet}/*_us3l.* for the export's arch
#   --eval-only   evaluate without training (the heads stay untrained: the baseline)
#   --resume      continue from the last checkpoint in DIR/ENGINE/
#   anything else goes to the engine: detectron2 KEY VALUE pairs (e.g. SOLVER.MAX_ITER 100),
#   mmdet --cfg-options key=value ..., --max-iters N (an N-iteration schedule) and --img-scale W H.
#
# Data: $DETECTRON2_DATASETS/{VOC2007,VOC2012,coco} for both engines (default ./datasets).
# Python: $US3L_VENV/bin/python (default <repo>/.venv). Bad input: one line on stderr, exit 2.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${US3L_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
USAGE="usage: tools/train_det.sh ENGINE TASK EXPORT_DIR [--gpus N] [--out DIR] [--nnodes M --node-rank R --dist-url tcp://HOST:PORT] [--config FILE] [--eval-only] [--resume] [extra engine options]"

die() { echo "train_det.sh: error: $*" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value; $USAGE"; }
is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
[[ $# -ge 3 ]] || die "expected ENGINE TASK EXPORT_DIR; $USAGE"
ENGINE="$1"; TASK="$2"; EXPORT="$3"; shift 3
case "$ENGINE" in detectron2|mmdet) ;; *) die "unknown ENGINE '$ENGINE'; expected detectron2 or mmdet" ;; esac
case "$TASK" in voc|coco) ;; *) die "unknown TASK '$TASK'; expected voc or coco" ;; esac
[[ -x "$PY" ]] || die "no python at $PY; build the environment with tools/setup_env.sh or set US3L_VENV"

GPUS=1; NNODES=1; NODE_RANK=0; DIST_URL=""; OUT=""; CONFIG=""; EVAL_ONLY=0; RESUME=0; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) need_value "$@"; GPUS="$2"; shift 2 ;;
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
is_int "$NNODES" && [[ "$NNODES" -ge 1 ]] || die "--nnodes '$NNODES' is not a positive integer"
is_int "$NODE_RANK" && [[ "$NODE_RANK" -lt "$NNODES" ]] || die "--node-rank '$NODE_RANK' must be in [0, $NNODES)"
if [[ "$NNODES" -gt 1 && -z "$DIST_URL" ]]; then die "--nnodes $NNODES needs --dist-url tcp://HOST:PORT (the rank-0 machine)"; fi
if [[ -n "$DIST_URL" && ! "$DIST_URL" =~ ^tcp://[^:/]+:[0-9]+$ ]]; then die "--dist-url '$DIST_URL' must look like tcp://HOST:PORT"; fi
if [[ -n "$CONFIG" && ! -f "$CONFIG" ]]; then die "config $CONFIG does not exist"; fi
[[ -n "$OUT" ]] || OUT="$ROOT/runs/det/${ENGINE}_${TASK}_$(basename "$EXPORT")"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Export folder, data layout and GPU count are checked once before any worker starts: by the
# detectron2 entry before `launch`, by the mmdet entry itself on one process, and here before torchrun.
if [[ "$ENGINE" == mmdet && $((GPUS * NNODES)) -gt 1 ]]; then
  "$PY" -m transfer.detection.preflight "$ENGINE" "$TASK" "$EXPORT" --gpus "$GPUS" || exit 2
fi

COMMON=(--task "$TASK" --export "$EXPORT" --out "$OUT")
[[ -n "$CONFIG" ]] && COMMON+=(--config "$CONFIG")
[[ "$EVAL_ONLY" == 1 ]] && COMMON+=(--eval-only)
[[ "$RESUME" == 1 ]] && COMMON+=(--resume)

if [[ "$ENGINE" == detectron2 ]]; then
  DIST=(--num-gpus "$GPUS" --num-machines "$NNODES" --machine-rank "$NODE_RANK")
  [[ -n "$DIST_URL" ]] && DIST+=(--dist-url "$DIST_URL")
  exec "$PY" "$ROOT/tools/train_detectron2.py" "${COMMON[@]}" "${DIST[@]}" "${EXTRA[@]}"
fi

if [[ $((GPUS * NNODES)) -gt 1 ]]; then
  HOSTPORT="${DIST_URL#tcp://}"
  MASTER_ADDR="${HOSTPORT%:*}"; MASTER_PORT="${HOSTPORT##*:}"
  [[ -n "$DIST_URL" ]] || { MASTER_ADDR=127.0.0.1; MASTER_PORT=$((29500 + RANDOM % 1000)); }
  exec "$PY" -m torch.distributed.run --nproc_per_node "$GPUS" --nnodes "$NNODES" \
    --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    "$ROOT/tools/train_mmdet.py" "${COMMON[@]}" --launcher pytorch "${EXTRA[@]}"
fi
exec "$PY" "$ROOT/tools/train_mmdet.py" "${COMMON[@]}" --launcher none "${EXTRA[@]}"
