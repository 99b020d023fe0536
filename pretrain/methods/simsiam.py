"""SimSiam (negative cosine with a predictor and stop-gradient). Over widths it is US+SimSiam:
sub-networks distilled with the same loss towards the base network (Table 7 case 2)."""
from pretrain.methods.us3l import table7_case

PRESET = table7_case(2)
