#!/usr/bin/env python
"""Train a pet classifier: `python scripts/train.py --help` lists the flags (same as `petclassifier train`)."""

import sys

from petclassifier.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
