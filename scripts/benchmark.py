#!/usr/bin/env python
"""Benchmark the tutorial pipeline against this package's on the same photos, model and batch size.

    python scripts/benchmark.py --dataset oxford-iiit-pet --data-dir ../shared/data --json bench.json
"""

import argparse
import json
import sys
from datetime import datetime

from petclassifier.benchmark import format_table, run_benchmark
from petclassifier.cli import add_train_arguments, config_from_args
from petclassifier.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--tutorial-epochs", type=int, default=3, help="epochs the tutorial pipeline trains (3)")
    parser.add_argument("--steps", type=int, default=8, help="batches timed for full fine-tune throughput (8)")
    parser.add_argument("--repeats", type=int, default=40, help="single-photo predictions timed (40)")
    args = parser.parse_args()
    cfg = config_from_args(args)
    out = cfg.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}-benchmark"
    try:
        result = run_benchmark(cfg, args.tutorial_epochs, args.steps, args.repeats, out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
