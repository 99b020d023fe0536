"""detectron2 glue: the compat layer (import first), the us3l backbone, datasets and configs."""
