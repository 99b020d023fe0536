"""MoCo: InfoNCE of the online query against momentum keys (Table 7 case 16's switches) in
MoCo's own B form (``method.infonce_form`` moco by default for these presets).

MoCo v2 adds a queue of earlier keys as negatives (set ``method.queue_size``, e.g. 4096, and
temperature 0.2 in its configs); MoCo v3 (the paper's ViT baseline) uses no queue and a predictor
(``method.predictor: true``)."""
from pretrain.methods.us3l import table7_case

PRESET_V2 = table7_case(16)
PRESET_V3 = table7_case(16)
