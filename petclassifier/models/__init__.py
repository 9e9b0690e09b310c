"""The networks: the registry of model families, the ImageNet kinds head, and self-describing checkpoints."""
