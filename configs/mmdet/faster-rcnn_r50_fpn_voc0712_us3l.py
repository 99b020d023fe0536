# Faster R-CNN R50-FPN on Pascal VOC07+12 (train VOC2007+VOC2012 trainval, test VOC2007 test),
# MMDetection's own VOC schedule (4 epochs over the 3x-repeated set, step at epoch 3, lr 0.01 at
# batch 16), with the self-supervised transfer protocol (design.md §3): RGB with torchvision's
# mean/std, every stage fine-tuned (frozen_stages=-1, norm_eval=False), SyncBN in backbone, FPN
# and the 4conv-1fc box head; AP/AP50/AP75 with the VOC07 11-point metric at IoU .50:.95.
# Channels, weights and data root come from the export and the run (transfer/mmdet/config.py):
# no channel numbers here. On one process SyncBN becomes BN.
_base_ = 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py'

custom_imports = dict(imports=['transfer.mmdet.backbone'], allow_failed_imports=False)
us3l_arch = 'resnet50'
norm_cfg = dict(type='SyncBN', requires_grad=True)

model = dict(
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        _delete_=True, type='US3LResNet', meta=None, out_indices=(0, 1, 2, 3),
        frozen_stages=-1, norm_eval=False, style='pytorch', norm_cfg=norm_cfg, init_cfg=None),
    neck=dict(in_channels=None, out_channels=256, num_outs=5, norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead', conv_out_channels=256, fc_out_channels=1024,
            norm_cfg=norm_cfg, num_classes=20)))

val_evaluator = dict(
    type='VOCMetric', metric='mAP', eval_mode='11points',
    iou_thrs=[0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
test_evaluator = val_evaluator
