#!/usr/bin/env python
"""Rank breeds (and cat or dog) for photos: `python scripts/predict.py [--checkpoint CKPT] PATH...`."""

import sys

from petclassifier.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
