#!/usr/bin/env python
"""Benchmark the PyTorch tutorial's pipeline against this package's: the same work on the same photos, files to answers.

    python scripts/benchmark.py --dataset oxford-iiit-pet --data-dir ../shared/data --json bench.json --plot bench.png
"""

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from petclassifier.cli.train import add_train_arguments, config_from_args
from petclassifier.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_train_arguments(parser)  # the default recipe's run; --out is the folder for every run, log and cache
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--plot", help="draw validation accuracy against wall time of the training runs (PNG)")
    parser.add_argument("--tutorial-epochs", type=int, default=25, help="epochs of each tutorial run (25, as it says)")
    parser.add_argument("--steps", type=int, default=8, help="full fine-tune steps timed per pipeline (8)")
    parser.add_argument("--repeats", type=int, default=40, help="single-photo predictions timed (40)")
    parser.add_argument("--startup-repeats", type=int, default=3, help="runs of each command whose start is timed (3)")
    args = parser.parse_args()
    cfg, _ = config_from_args(args)
    out = Path(cfg.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}-benchmark")
    try:
        from benchmarks.harness import format_table, run_benchmark  # imports torch: after --help

        if args.plot:
            from petclassifier.insight.plots import pyplot

            pyplot()  # without matplotlib, say so before the minutes of measuring
        result = run_benchmark(cfg, out, args.tutorial_epochs, args.steps, args.repeats, args.startup_repeats)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        from petclassifier.insight.plots import plot_accuracy_time

        plot_accuracy_time(result["train"], args.plot, f"{result['model']}: train from the photo files")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
