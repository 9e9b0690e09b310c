"""Stands in for petclassifier.web.workers where a test is about the jobs, not the training: a zygote whose workers
speak the worker's protocol but run each step's argv as a command line of its own (a process in the worker's group),
its output appended to the step's log. Run as `python tests/fake_worker.py FOLDER DEVICE`."""

import json
import subprocess

from petclassifier.web.parent import lines_from_parent
from petclassifier.web.workers import serve_forks


def fake_worker(n: int) -> None:
    steps = lines_from_parent()
    print(json.dumps({"ready": True}), flush=True)
    for line in steps:
        step = json.loads(line)
        with open(step["log"], "ab") as log:
            code = subprocess.run(step["argv"], stdout=log, stderr=subprocess.STDOUT).returncode
        print(json.dumps({"code": code}), flush=True)


serve_forks(fake_worker)
