"""Results of the transfer suite as tables and plots (accuracy against width and MACs)."""
