"""US3L pretraining: universally slimmable backbones, the paper's losses, one checkpoint for all widths."""
__version__ = "0.1.0"
