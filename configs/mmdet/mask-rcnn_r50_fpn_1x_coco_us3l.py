# Mask R-CNN R50-FPN on COCO 2017 (train2017 -> val2017, box and mask AP via pycocotools'
# CocoMetric) with the self-supervised transfer protocol of transfer/detection/protocol.py, the
# same one the detectron2 config runs. Inherits MMDetection's own 1x Mask R-CNN and overrides
# only what differs; each override says why. Channels, weights, data root and the per-process
# batch come from the export and the run (transfer/mmdet/config.py). On one process SyncBN
# becomes BN.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['transfer.mmdet.backbone', 'transfer.mmdet.evaluation'],
                      allow_failed_imports=False)
us3l_arch = 'resnet50'
# Images per optimizer step whatever the GPU count (protocol: 16); see the VOC config.
us3l_total_batch = 16
norm_cfg = dict(type='SyncBN', requires_grad=True)  # protocol: SyncBN in backbone, FPN, heads

model = dict(
    # RGB input with torchvision's mean/std: the export's (torchvision-trained) normalisation.
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    # Every stage fine-tuned, BN in train mode, channels from the export.
    backbone=dict(
        _delete_=True, type='US3LResNet', meta=None, out_indices=(0, 1, 2, 3),
        frozen_stages=-1, norm_eval=False, style='pytorch', norm_cfg=norm_cfg, init_cfg=None),
    neck=dict(in_channels=None, out_channels=256, num_outs=5, norm_cfg=norm_cfg),
    roi_head=dict(
        # The 4conv-1fc box head with norm, and norm in the mask head (mmselfsup's ms-1x).
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead', conv_out_channels=256, fc_out_channels=1024,
            norm_cfg=norm_cfg, num_classes=80),
        mask_head=dict(norm_cfg=norm_cfg, num_classes=80)))

# Multi-scale training, short side 640..800 step 32 (detectron2's 1x, mmselfsup's ms-1x), instead
# of MMDetection's single 1333x800. Test stays 1333x800.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomChoiceResize', scales=[(1333, s) for s in range(640, 801, 32)],
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
# Iteration-based with an infinite sampler, like detectron2's 1x.
train_dataloader = dict(
    batch_size=None,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
# Evaluated once, after training, by tools/train_mmdet.py (runner.test()): no validation loop.
val_dataloader = None
val_cfg = None
val_evaluator = None
# Box AND mask AP always (explicit, never inferred from the predictions), plus the detection
# count that tells "no detections" (AP 0) from a failed evaluation.
test_evaluator = [
    dict(type='CocoMetric', metric=['bbox', 'segm'], format_only=False, backend_args=None,
         ann_file=None),
    dict(type='DetectionCount'),
]

# 90k iterations at lr 0.02 (batch 16), warm-up 1000 iterations from 0.001x, x0.1 at 60k and 80k:
# detectron2's 1x, so that both engines run one schedule (MMDetection's 1x is 12 epochs, ~88k
# iterations, with a 500-iteration warm-up).
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=90000)
param_scheduler = [
    # full lr at step end - 1 = 1000, as detectron2's WARMUP_ITERS 1000 (see the VOC config)
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1001),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=90000, milestones=[60000, 80000],
         gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001))
auto_scale_lr = dict(enable=False, base_batch_size=16)  # the batch is fixed instead
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000),
                     logger=dict(type='LoggerHook', interval=20))
log_processor = dict(by_epoch=False)
