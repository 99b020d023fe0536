"""BYOL (negative cosine with a predictor towards a momentum encoder). Over widths it is US+BYOL:
the sub-networks distil towards the momentum encoder too (Table 7 case 3)."""
from pretrain.methods.us3l import table7_case

PRESET = table7_case(3)
