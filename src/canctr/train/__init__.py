"""Training: step function, loop, evaluation metrics and atomic checkpoints."""
