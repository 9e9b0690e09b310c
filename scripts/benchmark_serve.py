#!/usr/bin/env python
"""Load on `petclassifier serve`: requests per second, latency and server memory for one photo at a time.

    python scripts/benchmark_serve.py --checkpoint runs/<run> --clients 4 --requests 1000 --json serve.json
    python scripts/benchmark_serve.py --checkpoint runs/<run> --clients 40 --upload-mb 30   # memory under a burst
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
    parser.add_argument("--upload-mb", type=float,
                        help="instead: each client uploads one photo of random pixels this large, all at once")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    try:
        if args.requests < 20 or args.clients < 1:
            raise UserError("--requests must be at least 20 and --clients at least 1")
        from benchmarks.serve_load import burst, measure

        from petclassifier.cli.output import chosen_checkpoint

        checkpoint = str(chosen_checkpoint(args.checkpoint))
        if args.upload_mb:
            result = burst(checkpoint, args.upload_mb, args.clients, args.device)
        else:
            result = measure(checkpoint, Path(args.photo), args.requests, args.clients, args.device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.upload_mb:
        print(f"{result['clients']} uploads of {result['upload_mb']} MB at once: {result['answered']} answered in "
              f"{result['seconds']:.1f} s ({result['busy_answers']} 503s asked again); server memory "
              f"{result['rss_mb']['before']} MB before, peak {result['rss_mb']['peak']} MB")
    else:
        (warm, rss_warm), (end, rss_end) = ((k.removeprefix("after_"), v) for k, v in result["rss_mb"].items())
        latency = result["latency_ms"]
        print(f"{result['clients']} clients, {result['timed_requests']} timed requests of {result['photo']}: "
              f"{result['requests_per_second']:.1f} requests/s, latency p50 {latency['p50']:.1f} ms, "
              f"p95 {latency['p95']:.1f} ms, p99 {latency['p99']:.1f} ms")
        print(f"server memory: {rss_warm:.0f} MB after {warm} requests, {rss_end:.0f} MB after {end} "
              f"({100 * result['rss_growth']:+.1f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
