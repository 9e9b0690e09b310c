#!/usr/bin/env python
"""Load on `petclassifier serve`: requests per second, latency and server memory for one photo at a time.

    python scripts/benchmark_serve.py --checkpoint runs/<run> --clients 4 --requests 1000 --json serve.json
"""

import argparse
import json
import sys
from pathlib import Path

from petclassifier.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a best.pt, or a run folder (default: the newest runs/*/best.pt)")
    parser.add_argument("--photo", default=str(ROOT / "data" / "oxford-iiit-pet" / "images" / "pug_12.jpg"),
                        help="the photo every request sends (default: a bundled pug, 500x375 JPEG)")
    parser.add_argument("--requests", type=int, default=1000, help="in all; the first tenth warms up (1000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients, one request each at a time (4)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    try:
        if args.requests < 20 or args.clients < 1:
            raise UserError("--requests must be at least 20 and --clients at least 1")
        from benchmarks.serve_load import measure

        from petclassifier.cli import chosen_checkpoint

        result = measure(str(chosen_checkpoint(args.checkpoint)), Path(args.photo), args.requests, args.clients,
                         args.device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (warm, rss_warm), (end, rss_end) = ((k.removeprefix("after_"), v) for k, v in result["rss_mb"].items())
    print(f"{result['clients']} clients, {result['timed_requests']} timed requests of {result['photo']}: "
          f"{result['requests_per_second']:.1f} requests/s, latency p50 {result['latency_ms']['p50']:.1f} ms, "
          f"p95 {result['latency_ms']['p95']:.1f} ms")
    print(f"server memory: {rss_warm:.0f} MB after {warm} requests, {rss_end:.0f} MB after {end} "
          f"({100 * result['rss_growth']:+.1f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
