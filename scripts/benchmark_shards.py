#!/usr/bin/env python
"""The frozen pass shared by processes: one process of one thread against two of one thread each (torchrun), each
running the default recipe's frozen passes (one augmented view) on the same photos with a cold feature cache.

    python scripts/benchmark_shards.py --data-dir ../shared/data --json shards.json

Seconds are the sum of the passes' own timings ("frozen features (...): N photos in S s"), so decoding and training
are left out; both runs read photos decoded by an earlier warm-up run.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PASS = re.compile(r"frozen features \((.+)\): ([\d,]+) photos in ([\d.]+) s")


def run(command: list[str], threads: int) -> dict:
    """{pass name: seconds} of one train command, with `threads` threads a process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command[:3])} ... ended with status {done.returncode}: {done.stderr[-2000:]}")
    return {m[1]: float(m[3]) for m in PASS.finditer(done.stdout + done.stderr)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the folder holding oxford-iiit-pet/")
    parser.add_argument("--backend", default="torch", help="the frozen pass's backend (default torch)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shards-"))
    flags = ["train", "--dataset", "oxford-iiit-pet", "--data-dir", args.data_dir, "--augment-views", "1",
             "--epochs", "1", "--no-refit", "--no-flip-tta", "--backend", args.backend, "--workers", "0"]
    one = [sys.executable, "-m", "petclassifier"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "petclassifier"]
    try:
        run(one + flags + ["--cache-dir", str(work / "warm"), "--out", str(work / "warm-run")], 2)
        seconds = {}
        for name, command in (("one_process", one), ("two_processes", two)):
            cache = work / name
            shutil.copytree(work / "warm" / "images", cache / "images")  # decoded photos, but no features
            seconds[name] = run(command + flags + ["--cache-dir", str(cache), "--out", str(work / name / "run")], 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = {name: round(sum(passes.values()), 1) for name, passes in seconds.items()}
    result = {"passes": seconds, "seconds": total, "speedup": round(total["one_process"] / total["two_processes"], 2)}
    print(f"frozen passes, 1 thread a process: one process {total['one_process']} s, two processes "
          f"{total['two_processes']} s: {result['speedup']}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
