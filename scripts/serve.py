#!/usr/bin/env python
"""The local web page: `python scripts/serve.py [--checkpoint CKPT] [--host 127.0.0.1] [--port 8000]`."""

import sys

from petclassifier.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
