"""What every command's passes share: the frozen forward pass and its backends, the training loop, the metrics."""
