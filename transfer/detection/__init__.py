"""Engine-neutral detection pieces: dataset layouts, the synthetic data generator, the metrics schema."""
