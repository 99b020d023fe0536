"""Linear probes of a frozen backbone: cached features + L-BFGS logistic regression (the standard
transfer protocol), or an SGD-trained linear layer on augmented images (the paper's protocol)."""
