#!/usr/bin/env python
"""Grad-CAM, filters and feature maps for photos: `python scripts/explain.py --checkpoint CKPT PHOTO...`."""

import sys

from petclassifier.cli import main

if __name__ == "__main__":
    sys.exit(main(["explain", *sys.argv[1:]]))
