# The R-18 variant of faster-rcnn_r50_fpn_voc0712_us3l.py (basic blocks; channels from the export).
_base_ = './faster-rcnn_r50_fpn_voc0712_us3l.py'
us3l_arch = 'resnet18'
