"""Training, evaluation and inference on cached feature maps."""
