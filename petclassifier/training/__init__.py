"""A training run as phases: prepare, epochs, finish (calibration, refit, test score), and resume."""
