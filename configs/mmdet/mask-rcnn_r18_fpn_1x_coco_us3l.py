# The R-18 variant of mask-rcnn_r50_fpn_1x_coco_us3l.py (basic blocks; channels from the export).
_base_ = './mask-rcnn_r50_fpn_1x_coco_us3l.py'
us3l_arch = 'resnet18'
