"""Benchmark harnesses for scripts/benchmark*.py: the PyTorch tutorial's pipeline, the timed runs, the server load."""
