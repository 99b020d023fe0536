"""MMDetection glue: the us3l backbone registered in mmdet's MODELS and config helpers."""
