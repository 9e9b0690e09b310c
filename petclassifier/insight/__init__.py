"""What a model learned, measured and shown: evaluation, Grad-CAM, hand-crafted comparison, plots."""
