"""SimCLR (InfoNCE over 2N views, no momentum). Trained over widths it is US+SimCLR: the
sub-networks are distilled with InfoNCE (Table 7 case 14); at a fixed width it is plain SimCLR."""
from pretrain.methods.us3l import table7_case

PRESET = table7_case(14)
