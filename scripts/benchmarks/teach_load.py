"""A classroom teaching through `petclassifier serve`, as the page does: one learner alone, then N learners pressing
Train at once (each with k photos a class of its own), timed from the upload to each model; the yardstick, `predict`
with its defaults on the classroom's photos; each model scored on photos it never saw; the memory of the server and
its workers. Standard library only."""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.serve_load import multipart, started_server
from petclassifier.data.images import photos_under

QUEUED_POLL, RUNNING_POLL = 1.5, 0.4  # seconds between the page's questions about a job, waiting and training


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (Linux), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(url: str, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
            busy: list | None = None) -> dict:
    """The JSON answer; a 503 is asked again after its Retry-After, as the page does (counted in `busy`)."""
    address = urlsplit(url)
    while True:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=600)
        connection.request(method, path, body, {"Content-Type": content_type} if content_type else {})
        answer = connection.getresponse()
        reply = json.loads(answer.read())
        connection.close()
        if answer.status != 503 or busy is None:
            break
        busy.append(1)
        time.sleep(float(answer.getheader("Retry-After", "1")))
    if answer.status >= 400:
        raise RuntimeError(f"{method} {path}: {answer.status} {reply}")
    return reply


def learners_photos(data: Path, learners: int, per_class: int, held_per_class: int) -> list[dict]:
    """Each learner's own photos: `per_class` of each class from train/, `held_per_class` from val/ (no two learners
    share one), drawn at random."""
    rng, found = random.Random(0), {}
    for split in ("train", "val"):
        for folder in sorted(c for c in (data / split).iterdir() if c.is_dir()):
            photos = photos_under(folder)
            rng.shuffle(photos)
            found[split, folder.name] = photos
    classes = sorted({name for _, name in found})
    return [{"train": [(Path(p), c) for c in classes for p in found["train", c][i * per_class : (i + 1) * per_class]],
             "held": [(Path(p), c) for c in classes
                      for p in found["val", c][i * held_per_class : (i + 1) * held_per_class]]}
            for i in range(learners)]


def teach(url: str, photos: list[tuple[Path, str]], busy: list) -> tuple[str, dict, float]:
    """One learner's job: upload, follow until done; (job id, its last report, seconds from the upload on)."""
    body, kind = multipart([(p.name, p.read_bytes()) for p, _ in photos],
                           {"labels": json.dumps([label for _, label in photos])})
    started = time.perf_counter()
    job = request(url, "POST", "/api/train", body, kind, busy)["job"]
    while (report := request(url, "GET", f"/api/train/{job}"))["status"] in ("queued", "running"):
        time.sleep(QUEUED_POLL if report["status"] == "queued" else RUNNING_POLL)  # as the page asks
    if report["status"] != "done":
        raise RuntimeError(f"job {job} failed: {report['error']}")
    return job, report, time.perf_counter() - started


def held_out_right(url: str, job: str, held: list[tuple[Path, str]]) -> int:
    """How many of the held-out photos the job's model names right."""
    body, kind = multipart([(p.name, p.read_bytes()) for p, _ in held], {"job": job})
    answers = request(url, "POST", "/api/predict", body, kind)
    return sum(a["predictions"][0]["label"] == label for a, (_, label) in zip(answers, held))


def pss_mb(pid: int) -> float:
    """A process's proportional set size (Linux): its own pages, and its share of those it shares (PyTorch's
    libraries, mapped by the server and each worker alike), in MB; 0 for one that has ended."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("Pss:")), 0.0)


def family(pid: int) -> list[int]:
    """A process and its descendants (the server, its workers and theirs)."""
    try:
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except OSError:
        return [pid]
    return [pid, *(p for child in children for p in family(child))]


class PeakMemory:
    """The largest memory of the server and its workers together (the sum of their PSS: a page counted once), sampled
    every 2 s meanwhile (reading a process's PSS takes the kernel 20 ms: more often slows what it measures)."""

    def __init__(self, pid: int):
        self.pid, self.peak_mb, self.stop = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.stop.wait(2.0):
            self.peak_mb = max(self.peak_mb, sum(map(pss_mb, family(self.pid))))

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def predict_seconds(checkpoint: str, photos: list[Path]) -> float:
    """Seconds of `petclassifier predict --checkpoint CHECKPOINT PHOTOS...` with its defaults, start to end, after
    one call on a photo has prepared what predict keeps for later calls (the checkpoint's ONNX copy)."""
    command = [sys.executable, "-m", "petclassifier", "predict", "--checkpoint", checkpoint, "--json"]
    subprocess.run([*command, str(photos[0])], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.perf_counter()
    subprocess.run([*command, *map(str, photos)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(checkpoint: str, data: Path, learners: int, per_class: int, held_per_class: int) -> dict:
    """One learner alone on a warm server, then `learners` at once; then `predict` on the classroom's photos."""
    drawn = learners_photos(data, learners + 1, per_class, held_per_class)
    alone, classroom = drawn[0], drawn[1:]
    with started_server(checkpoint, "--device", "cpu") as (server, line):
        # the rest of its output (uvicorn's line per request) read as it comes: a full pipe would stop the server
        threading.Thread(target=server.stdout.read, daemon=True).start()
        url = line.split(" at ")[-1].split()[0]
        started = time.perf_counter()
        while not (health := request(url, "GET", "/api/health"))["teaching"]["ready_workers"]:
            time.sleep(0.2)
        warm_up = time.perf_counter() - started
        job, report, seconds = teach(url, alone["train"], [])
        first = {"seconds_to_model": round(seconds, 1), "recipe": {k: report["recipe"][k] for k in
                                                                  ("augment_views", "epochs", "batch_size")},
                 "held_out_right": held_out_right(url, job, alone["held"]), "held_out": len(alone["held"])}
        results, busy, threads = [None] * learners, [], []
        server_cpu = cpu_seconds(server.pid)
        with PeakMemory(server.pid) as memory:
            started = time.perf_counter()
            for i, learner in enumerate(classroom):
                def one(i=i, learner=learner):
                    results[i] = teach(url, learner["train"], busy)
                threads.append(threading.Thread(target=one))
                threads[-1].start()
            for thread in threads:
                thread.join()
            last = time.perf_counter() - started
        server_cpu = cpu_seconds(server.pid) - server_cpu  # its workers' time not included
        if None in results:
            raise RuntimeError("a learner got no model (see the server's output)")
        right = [held_out_right(url, job, learner["held"]) for (job, _, _), learner in zip(results, classroom)]
        server_mb = pss_mb(server.pid)
    yardstick = predict_seconds(checkpoint, [p for learner in classroom for p, _ in learner["train"]])
    return {"checkpoint": checkpoint, "data": str(data), "per_class": per_class, "held_out_per_class": held_per_class,
            "jobs_at_once": health["teaching"]["at_once"], "warm_up_seconds": round(warm_up, 1), "alone": first,
            "classroom": {"learners": learners, "photos": learners * len(classroom[0]["train"]),
                          "seconds_to_last_model": round(last, 1),
                          "seconds_to_each_model": sorted(round(s, 1) for _, _, s in results),
                          "busy_answers": len(busy), "held_out_right": right,
                          "held_out": len(classroom[0]["held"]),
                          "peak_mb_server_and_workers": round(memory.peak_mb), "server_mb_after": round(server_mb),
                          "server_cpu_seconds": round(server_cpu, 1)},
            "predict_seconds": round(yardstick, 1), "last_model_over_predict": round(last / yardstick, 2)}
