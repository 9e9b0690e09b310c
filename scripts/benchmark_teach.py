#!/usr/bin/env python
"""Teaching in the page, timed: k photos per class from DATA/train/ through `serve`'s POST /api/train, then the
held-out photos of DATA/val/ named by the taught model. The first job starts from an empty cache.

    python scripts/benchmark_teach.py --data ../shared/data/cats-vs-dogs --per-class 10 --draws 3 --json teach.json
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="the model the server serves (default: the newest runs/*/best.pt)")
    parser.add_argument("--data", required=True, help="a folder with train/<class>/ and val/<class>/ photos")
    parser.add_argument("--per-class", type=int, default=10, help="training photos per class (10)")
    parser.add_argument("--held-out", type=int, default=10, help="held-out photos per class each job names (10)")
    parser.add_argument("--draws", type=int, default=3, help="jobs, each on photos drawn with another seed (3)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    from benchmarks.teach_load import measure

    from petclassifier.cli import chosen_checkpoint
    from petclassifier.errors import UserError

    try:
        checkpoint = str(chosen_checkpoint(args.checkpoint))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache  # the server, and the jobs it starts, begin with nothing cached
        result = measure(checkpoint, Path(args.data), args.per_class, args.held_out, args.draws)
    for run in result["runs"]:
        print(f"draw {run['draw']}: {run['photos']} photos to a model in {run['seconds_to_model']:.1f} s "
              f"({run['epochs']} epochs); {run['held_out_right']}/{run['held_out']} held-out photos right; "
              f"server {run['server_rss_mb']['before']} -> {run['server_rss_mb']['after']} MB, training peak "
              f"{run['training_peak_rss_mb']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
