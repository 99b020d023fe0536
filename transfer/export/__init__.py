"""Export one US3L checkpoint at any width: BN recalibration, engine formats, verification.

``tools/convert_width.py`` is the command line; ``convert.run`` the orchestration. One module per
job: ``bn_calibration`` (exact BN statistics at a width), ``calib_data`` (the eval-time images they
come from), ``torchvision_export`` / ``detectron2_export`` / ``mmdet_export`` (file formats, the
detectron2 key renaming), ``verify`` (load back through each engine and compare features),
``macs`` (params/MACs), ``meta`` (the meta.json the engine backbones are built from).
"""
