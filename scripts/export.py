#!/usr/bin/env python
"""Export a checkpoint for deployment: `python scripts/export.py --checkpoint CKPT --format onnx --out DIR`."""

import sys

from petclassifier.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
