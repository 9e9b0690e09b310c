#!/usr/bin/env python
"""The README's results: the default breed and species models trained on the Oxford-IIIT Pet subset, each scored
once on its test photos, their reports written to docs/results/ and the README's table rendered from them.

    python scripts/oxford_results.py --shared ../shared/data

Each run is `petclassifier train --dataset oxford-iiit-pet --data-dir SHARED --task TASK` with nothing else given,
then `petclassifier evaluate` of its best.pt on the test split; nothing here is edited by hand afterwards.
"""

import argparse
import sys
import time
from pathlib import Path

from petclassifier import train
from petclassifier.insight.evaluate import evaluate_checkpoint, write_outputs

ROOT = Path(__file__).resolve().parent.parent
TASKS = {"breed": "1-oxford-breed-efficientnet_lite2.json", "species": "2-oxford-species-efficientnet_lite2.json"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data", help="the folder holding oxford-iiit-pet/")
    parser.add_argument("--runs", default="runs", help="where the two run folders go")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    from choose_recipe import cpu_name
    from results_table import main as render

    for task in args.tasks:
        run = Path(args.runs) / f"oxford-{task}-default"
        started = time.perf_counter()
        train(dataset="oxford-iiit-pet", data_dir=args.shared, task=task, out=str(run))
        seconds = time.perf_counter() - started
        result = evaluate_checkpoint(run / "best.pt", split="test", device="cpu")
        report = result["report"]
        report.update(checkpoint=str(run / "best.pt"), data_dir=args.shared, train_seconds=round(seconds, 1),
                      machine=f"{cpu_name()}, no GPU",
                      command=f"petclassifier train --dataset oxford-iiit-pet --data-dir {args.shared} --task {task}")
        write_outputs(result, None, ROOT / "docs" / "results" / TASKS[task])
        print(f"{task}: test top-1 {report['top1']:.1%} on {report['photos']} photos, trained in {seconds:.0f} s")
    sys.argv = [sys.argv[0]]
    return render()


if __name__ == "__main__":
    sys.exit(main())
