# Faster R-CNN R50-FPN on Pascal VOC07+12 (train VOC2007+VOC2012 trainval, test VOC2007 test) with
# the self-supervised transfer protocol of transfer/detection/protocol.py, the same one the
# detectron2 config runs. Inherits MMDetection's own VOC07+12 Faster R-CNN (model, datasets, VOC
# metric) and overrides only what differs; each override says why. Channels, weights, data root
# and the per-process batch come from the export and the run (transfer/mmdet/config.py): no
# channel numbers here. On one process SyncBN becomes BN.
_base_ = 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py'

custom_imports = dict(imports=['transfer.mmdet.backbone', 'transfer.mmdet.evaluation'],
                      allow_failed_imports=False)
us3l_arch = 'resnet50'
# Images per optimizer step whatever the GPU count (protocol: 16). transfer/mmdet/config.py sets
# train_dataloader.batch_size = 16 / (GPUs x accumulation) and optim_wrapper.accumulative_counts;
# a different total scales the lr linearly.
us3l_total_batch = 16
norm_cfg = dict(type='SyncBN', requires_grad=True)  # protocol: SyncBN in backbone, FPN, box head

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
        # The 4conv-1fc box head with norm, as in detectron2's FastRCNNConvFCHead config.
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead', conv_out_channels=256, fc_out_channels=1024,
            norm_cfg=norm_cfg, num_classes=20)))

# Multi-scale training, short side 480..800 step 32, long side <= 1333 (MoCo / mmselfsup VOC),
# instead of MMDetection's single 1000x600.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomChoiceResize', scales=[(1333, s) for s in range(480, 801, 32)],
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
# Test at short side 800, long side <= 1333 (instead of 1000x600).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
_voc_train = dict(
    type='VOCDataset', data_root=None, pipeline=train_pipeline,
    # No minimum box size (MoCo's detectron2 protocol filters none; MMDetection's VOC uses 32).
    filter_cfg=dict(filter_empty_gt=True, min_size=0, bbox_min_size=0))
# Iteration-based with an infinite sampler: no RepeatDataset x3, the schedule counts iterations.
train_dataloader = dict(
    batch_size=None,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        _delete_=True, type='ConcatDataset', ignore_keys=['dataset_type'],
        datasets=[
            dict(_voc_train, ann_file='VOC2007/ImageSets/Main/trainval.txt',
                 data_prefix=dict(sub_data_root='VOC2007/')),
            dict(_voc_train, ann_file='VOC2012/ImageSets/Main/trainval.txt',
                 data_prefix=dict(sub_data_root='VOC2012/')),
        ]))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
# Evaluated once, after training, by tools/train_mmdet.py (runner.test()): no validation loop.
val_dataloader = None
val_cfg = None
val_evaluator = None
# AP at IoU .50:.05:.95 with the VOC07 11-point metric (AP50 and AP75 among them), plus the
# detection count that tells "no detections" (AP 0) from a failed evaluation.
test_evaluator = [
    dict(type='VOCMetric', metric='mAP', eval_mode='11points',
         iou_thrs=[0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]),
    dict(type='DetectionCount'),
]

# 24k iterations at lr 0.02 (batch 16), 100-iteration linear warm-up from 0.001x, x0.1 at 18k and
# 22k (MoCo's pascal_voc_R_50_C4_24k, mmselfsup's ms-24k), instead of 4 epochs x 3 at lr 0.01.
# mmengine's LinearLR reaches the full lr at step end - 1: end=101 is detectron2's WARMUP_ITERS 100
# to the iteration (same factor at every step).
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=24000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=101),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=24000, milestones=[18000, 22000],
         gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001))
auto_scale_lr = dict(enable=False, base_batch_size=16)  # the batch is fixed instead
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000),
                     logger=dict(type='LoggerHook', interval=20))
log_processor = dict(by_epoch=False)
