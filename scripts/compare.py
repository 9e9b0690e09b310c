#!/usr/bin/env python
"""Hand-crafted features vs learned ones: `python scripts/compare.py --help` (same as `petclassifier compare`)."""

import sys

from petclassifier.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
