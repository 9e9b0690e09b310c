#!/usr/bin/env python
"""Evaluate a checkpoint: top-1/top-5, per-class metrics, confusions (same flags as `petclassifier evaluate`)."""

import sys

from petclassifier.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
