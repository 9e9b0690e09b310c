#!/usr/bin/env python
"""A classroom teaching in the page, timed: one learner alone, then N learners pressing Train at once, each with k
photos a class of its own from DATA/train/, through `serve`'s POST /api/train; each model then names held-out photos
of DATA/val/; `predict` with its defaults on the classroom's photos is the yardstick. The cache starts empty.

    python scripts/benchmark_teach.py --data ../shared/data/cats-vs-dogs --learners 30 --json teach.json
"""

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--checkpoint", help="the model the server serves (default: the newest runs/*/best.pt)")
    parser.add_argument("--data", required=True, help="a folder with train/<class>/ and val/<class>/ photos")
    parser.add_argument("--learners", type=int, default=30, help="learners pressing Train at once (30)")
    parser.add_argument("--per-class", type=int, default=10, help="training photos per class of each learner (10)")
    parser.add_argument("--held-out", type=int, default=5, help="held-out photos per class each model names (5)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    from benchmarks.teach_load import measure

    from petclassifier.cli.output import chosen_checkpoint
    from petclassifier.errors import UserError

    try:
        checkpoint = str(chosen_checkpoint(args.checkpoint))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache  # the server, its workers and predict begin with nothing cached
        result = measure(checkpoint, Path(args.data), args.learners, args.per_class, args.held_out)
    result["cpu"] = {"name": cpu_name(), "cores": len(os.sched_getaffinity(0))}
    alone, room = result["alone"], result["classroom"]
    print(f"workers warm after {result['warm_up_seconds']} s; up to {result['jobs_at_once']} jobs at once")
    print(f"one learner alone: a model in {alone['seconds_to_model']} s; {alone['held_out_right']}/"
          f"{alone['held_out']} held-out photos right")
    print(f"{room['learners']} learners at once ({room['photos']} photos): the last model after "
          f"{room['seconds_to_last_model']} s ({room['busy_answers']} busy answers waited out); held-out photos right "
          f"per model: min {min(room['held_out_right'])}/{room['held_out']}")
    print(f"predict on the same {room['photos']} photos: {result['predict_seconds']} s; the last model took "
          f"{result['last_model_over_predict']}x that")
    print(f"server and workers: peak {room['peak_mb_server_and_workers']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
