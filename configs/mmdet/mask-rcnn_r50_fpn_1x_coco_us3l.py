# Mask R-CNN R50-FPN on COCO 2017 (train2017 -> val2017, box and mask AP via pycocotools'
# CocoMetric), MMDetection's own 1x schedule (12 epochs, steps at 8 and 11, lr 0.02 at batch 16),
# with the self-supervised transfer protocol (design.md §3): RGB with torchvision's mean/std,
# every stage fine-tuned, SyncBN in backbone, FPN, the 4conv-1fc box head and the mask head.
# Channels, weights and data root come from the export and the run (transfer/mmdet/config.py).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

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
            norm_cfg=norm_cfg, num_classes=80),
        mask_head=dict(norm_cfg=norm_cfg, num_classes=80)))
