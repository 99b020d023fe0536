#!/usr/bin/env bash
# The longer CPU run (not in CI): on the synthetic VOC-format set, each engine fine-tunes Faster
# R-CNN FPN from an export at two widths, and AP50 on VOC2007 test is compared with the same
# model before fine-tuning (heads untrained: --eval-only). Everything goes through
# tools/train_det.sh and the engines' own evaluators; the table comes from collect_results.py.
#
#   bash bench/det_synthetic.sh [WORK]           (default WORK=/tmp/us3l_det_bench)
#
# Environment: CKPT (a US3L checkpoint; default: a randomly initialised resnet18 written here, so
# the run shows fine-tuning works end to end, not the value of pretraining), ARCH (resnet18),
# WIDTHS ("0.5 1.0"), ITERS (100), ENGINES ("detectron2 mmdet"), TRAIN/TEST images (64/32),
# SIZE (128). Runs under `nice -n 10`; 3-9 s per iteration on 2 shared CPU cores (~1.5 h in all).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${US3L_VENV:-$ROOT/.venv}/bin/python"
WORK="${1:-/tmp/us3l_det_bench}"
ARCH="${ARCH:-resnet18}"
WIDTHS="${WIDTHS:-0.5 1.0}"
ITERS="${ITERS:-100}"
ENGINES="${ENGINES:-detectron2 mmdet}"
TRAIN="${TRAIN:-64}"; TEST="${TEST:-32}"; SIZE="${SIZE:-128}"
NICE=(nice -n 10)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$WORK"

CKPT="${CKPT:-}"
if [[ -z "$CKPT" ]]; then
  CKPT="$WORK/random_${ARCH}.pth"
  [[ -f "$CKPT" ]] || "$PY" - "$CKPT" "$ARCH" <<'EOF'
import sys, torch
from pretrain.checkpoint import save_checkpoint
from pretrain.models import build_backbone
torch.manual_seed(0)
cfg = {"model": {"arch": sys.argv[2], "stem": "imagenet"}, "data": {"name": "synthetic"},
       "method": {"name": "random-init (bench)"}}
save_checkpoint(sys.argv[1], config=cfg, state={"backbone": build_backbone(cfg["model"]).state_dict()})
EOF
fi

echo "== export $CKPT at widths $WIDTHS"
"${NICE[@]}" "$PY" "$ROOT/tools/convert_width.py" "$CKPT" --out "$WORK/exports" --widths $WIDTHS \
  --calib-data synthetic --calib-batches 4 --calib-batch-size 16 --quiet

echo "== synthetic VOC data: $TRAIN trainval images per year, $TEST test images, ${SIZE}px"
[[ -d "$WORK/data/VOC2007" ]] || "${NICE[@]}" "$PY" -m transfer.detection.synthetic "$WORK/data" --voc \
  --train "$TRAIN" --test "$TEST" --size "$SIZE"
export DETECTRON2_DATASETS="$WORK/data"

STEP=$((ITERS * 3 / 4)); WARM=$((ITERS / 10))
D2=(SOLVER.IMS_PER_BATCH 4 SOLVER.BASE_LR 0.02 SOLVER.MAX_ITER "$ITERS" SOLVER.STEPS "($STEP,)"
    SOLVER.WARMUP_ITERS "$WARM" SOLVER.CHECKPOINT_PERIOD 100000 INPUT.MIN_SIZE_TRAIN "($SIZE,)"
    INPUT.MAX_SIZE_TRAIN "$SIZE" INPUT.MIN_SIZE_TEST "$SIZE" INPUT.MAX_SIZE_TEST "$SIZE"
    MODEL.RPN.BATCH_SIZE_PER_IMAGE 64 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 32
    MODEL.RPN.POST_NMS_TOPK_TRAIN 128 MODEL.RPN.POST_NMS_TOPK_TEST 128
    TEST.PRECISE_BN.NUM_ITER 20 DATALOADER.NUM_WORKERS 1 SEED 0)
D2_EVAL=(INPUT.MIN_SIZE_TEST "$SIZE" INPUT.MAX_SIZE_TEST "$SIZE" MODEL.RPN.POST_NMS_TOPK_TEST 128
         DATALOADER.NUM_WORKERS 1)
MM=(--img-scale "$SIZE" "$SIZE" --cfg-options train_dataloader.batch_size=4
    train_dataloader.num_workers=1 val_dataloader.num_workers=1 test_dataloader.num_workers=1
    optim_wrapper.optimizer.lr=0.02 model.train_cfg.rpn.sampler.num=64
    model.train_cfg.rcnn.sampler.num=32 model.train_cfg.rpn_proposal.max_per_img=128
    model.test_cfg.rpn.max_per_img=128 randomness.seed=0)

for W in $WIDTHS; do
  EXPORT="$WORK/exports/$(printf 'w%.2f' "$W")"
  for ENGINE in $ENGINES; do
    echo "== $ENGINE width $W: before fine-tuning (eval only), then $ITERS iterations"
    if [[ "$ENGINE" == detectron2 ]]; then
      "${NICE[@]}" bash "$ROOT/tools/train_det.sh" detectron2 voc "$EXPORT" --eval-only \
        --out "$WORK/runs/detectron2_w${W}_untrained" "${D2_EVAL[@]}" > "$WORK/d2_w${W}_untrained.log" 2>&1
      "${NICE[@]}" bash "$ROOT/tools/train_det.sh" detectron2 voc "$EXPORT" \
        --out "$WORK/runs/detectron2_w${W}" "${D2[@]}" > "$WORK/d2_w${W}.log" 2>&1
    else
      "${NICE[@]}" bash "$ROOT/tools/train_det.sh" mmdet voc "$EXPORT" --eval-only \
        --out "$WORK/runs/mmdet_w${W}_untrained" "${MM[@]}" > "$WORK/mm_w${W}_untrained.log" 2>&1
      "${NICE[@]}" bash "$ROOT/tools/train_det.sh" mmdet voc "$EXPORT" --max-iters "$ITERS" \
        --out "$WORK/runs/mmdet_w${W}" "${MM[@]}" > "$WORK/mm_w${W}.log" 2>&1
    fi
    grep -h '"AP50"' "$WORK/runs/${ENGINE}_w${W}_untrained/metrics.json" "$WORK/runs/${ENGINE}_w${W}/metrics.json"
  done
done

"$PY" "$ROOT/tools/collect_results.py" "$WORK/runs" --out "$WORK/report"
