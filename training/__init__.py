"""Training: the two-stream CNN+Transformer network, its training, evaluation and model registry."""
