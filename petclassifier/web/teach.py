"""Teaching the network in the page: photos and their class names in, a `petclassifier train` run on them out.

Each job is the command a user would type, `petclassifier train --dataset folder`, run on the job's photos in a
folder of its own, then `petclassifier doctor` on them: run by a warm worker (teach_worker.py: PyTorch and the network
loaded once), as many jobs at once as the cores and the free memory allow, the others waiting their turn. The page
follows a job through the files training writes as it goes (metrics.jsonl: a row per epoch; the log's last line: the
phase it is in; summary.json at the end).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..engine.metrics import epoch_rows
from ..runtime import resolve_device
from .job_files import (
    KEEP_SECONDS,
    OWNER,
    ROOT_PREFIX,
    failure_line,
    findings_by_photo,
    last_line,
    read_json,
    sweep_abandoned,
)
from .job_input import MIN_CLASS_PHOTOS, Refused, parse_labels, parse_options, write_photos
from .workers import Worker, Zygote, cpu_count, worker_slots

MAX_WAITING = 32  # jobs waiting for a worker (a classroom's); past it 503 with Retry-After
JOB_SECONDS = 20 * 60  # a job still training after this is stopped (500 photos take about 3 minutes on 2 cores)
EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "elapsed")  # of each epoch, for the page
PATH_FIELDS = ("data_dir", "out", "cache_dir", "resume")  # of a job's config: places on the server, not shown
MAX_KEPT = 64  # finished jobs kept at once (two classrooms' models, ~25 MB each); past it the oldest goes first


@dataclass
class Job:
    """One teaching job: its photos (photos/train/<class>/), its run folder and where it stands."""

    id: str
    folder: Path
    classes: dict[str, int]  # class name -> photos, in the model's (sorted) order
    options: dict  # the settings the page gave (train's flags); the rest is the recipe sized to the photos
    status: str = "queued"  # queued | running | done | failed
    error: str | None = None
    started: float | None = None
    ended: float | None = None

    @property
    def run(self) -> Path:
        return self.folder / "run"

    @property
    def checkpoint(self) -> Path:
        return self.run / "best.pt"

    @property
    def log(self) -> Path:
        return self.folder / "train.log"

    def report(self) -> dict:
        """Where the job stands, as GET /api/train/ID answers: status, epochs so far, phase, and the results."""
        now = self.ended or time.time()
        recipe = read_json(self.run / "config.json")
        answer = {"job": self.id, "status": self.status, "error": self.without_paths(self.error),
                  "options": self.options, "classes": [{"name": name, "photos": n} for name, n in self.classes.items()],
                  "seconds": round(now - self.started, 1) if self.started else 0.0,
                  "phase": self.without_paths(last_line(self.log)),
                  "epochs": epoch_rows(self.run / "metrics.jsonl", EPOCH_KEYS, missing_ok=True),
                  "recipe": {k: v for k, v in recipe.items() if k not in PATH_FIELDS} if recipe else None}
        if self.status == "done":
            answer["doctor"] = findings_by_photo(read_json(self.folder / "doctor.json"))
            summary = read_json(self.run / "summary.json") or {}
            answer["cross_fitted_confusion"] = summary.get("cross_fitted_confusion")
            answer["calibration"] = summary.get("calibration")
            answer["checkpoint"] = f"/api/train/{self.id}/checkpoint"
        return answer

    def without_paths(self, line: str | None) -> str | None:
        """A line training printed, with the job's folder on the server left out (`run folder run`)."""
        return line and line.replace(f"{self.folder}{os.sep}", "").replace(str(self.folder), ".")


class TrainJobs:
    """The jobs of one server: queued, trained by up to `workers` warm workers at once (None: as many as the cores
    and the free memory allow), kept a while, all removed at `close`."""

    def __init__(self, device: str = "auto", time_limit: float = JOB_SECONDS, workers: int | None = None):
        sweep_abandoned()  # the folders of servers that were killed before they could remove them
        self._root: Path | None = None  # made at the first job
        self.time_limit = time_limit
        self.device = device
        self.device_type = resolve_device(device).type  # where the jobs, which resolve it alike, train: cpu, cuda
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.slots = workers or worker_slots()
        self.idle: list[Worker] = []  # warm workers waiting for a job
        self.busy: set[Worker] = set()
        self.started_workers = 0
        self.zygote: Zygote | None = None  # what forks the workers, started with the first
        self.runner = ThreadPoolExecutor(self.slots, thread_name_prefix="teach")
        self.closed = False

    def create(self, uploads: list[tuple[str, BinaryIO]], labels: str | None, settings: dict[str, str]) -> Job:
        """A queued job for the uploads (file name, readable file), `labels` a JSON list of one class per upload."""
        names = parse_labels(labels, len(uploads))
        options = parse_options(settings)
        counts = Counter(names)
        if too_few := [name for name in sorted(counts) if counts[name] < MIN_CLASS_PHOTOS]:
            raise Refused(400, f"class {too_few[0]!r} has {counts[too_few[0]]} photo; each class needs at least "
                               f"{MIN_CLASS_PHOTOS} (10 or more learn well)")
        self.sweep()
        with self.lock:
            if sum(job.status == "queued" for job in self.jobs.values()) >= MAX_WAITING:
                raise Refused(503, f"{MAX_WAITING} jobs are waiting to train already; try again in a minute")
            job_id = secrets.token_hex(8)
            job = Job(job_id, self.root / job_id, {name: counts[name] for name in sorted(counts)}, options)
            job.folder.mkdir(parents=True)
        try:
            write_photos(job.folder / "photos" / "train", uploads, names)
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        with self.lock:
            self.jobs[job.id] = job
        self.runner.submit(self._train, job)
        return job

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
            (self._root / OWNER).write_text(f"{os.getpid()}\n")  # while this process lives, the folder is in use
        return self._root

    def get(self, job_id: str) -> Job:
        self.sweep()
        with self.lock:
            if job_id not in self.jobs:
                raise Refused(404, f"no training job {job_id!r} (jobs are removed {KEEP_SECONDS // 60} minutes "
                                   "after they end)")
            return self.jobs[job_id]

    def status(self, job_id: str) -> dict:
        """Where a job stands (Job.report), with its place in the line while it waits and where the jobs train."""
        job = self.get(job_id)
        with self.lock:
            waiting = [j for j in self.jobs.values() if j.status == "queued"]
        place = waiting.index(job) + 1 if job in waiting else None
        return {**job.report(), "place": place, "at_once": self.slots, "device": self.device_type}

    def ready_workers(self) -> int:
        """Workers warmed up and alive: jobs can start at once on them."""
        with self.lock:
            return sum(w.ready.is_set() and w.alive for w in [*self.idle, *self.busy])

    def command(self, job: Job) -> list[str]:
        """The `petclassifier train` arguments of a job."""
        flags = [f"--{key.replace('_', '-')}={value}" for key, value in job.options.items()]
        # decoded in the worker itself (the other cores train other jobs); no curves.png: the page draws the epochs
        return ["train", "--dataset", "folder", "--data-dir", str(job.folder / "photos"), "--out", str(job.run),
                "--device", self.device, "--workers", "0", "--no-curves", *flags]

    def doctor_command(self, job: Job) -> list[str]:
        """The `petclassifier doctor` arguments that check a job's photos once its model is made."""
        return ["doctor", str(job.folder / "photos"), "--dataset", "folder", "--json", str(job.folder / "doctor.json"),
                "--device", self.device, "--workers", "0"]

    def start_workers(self) -> None:
        """Start every worker warming up now, for the first jobs not to wait for one (the server's start)."""
        with self.lock:
            self.idle += [self._new_worker() for _ in range(self.slots - len(self.idle) - len(self.busy))]

    def _new_worker(self) -> Worker:
        if self.zygote is None or self.zygote.process.poll() is not None:
            self.zygote = Zygote(self.root / "workers", self.device)
        self.started_workers += 1
        return Worker(self.zygote)

    def _train(self, job: Job) -> None:
        """Run a job's training, then the doctor on its photos, in a warm worker, on one of the runner's threads."""
        with self.lock:
            if self.closed or job.status != "queued":
                return
            worker = self.idle.pop() if self.idle else self._new_worker()
            self.busy.add(worker)
            job.status, job.started = "running", time.time()
        try:
            code = self._run(job, worker, self.command(job))
            if code == 0 and job.checkpoint.exists():
                (job.run / "last.pt").unlink(missing_ok=True)  # nothing resumes a finished job: its disk goes back
                self._run(job, worker, self.doctor_command(job))  # what it finds is extra: the model is made either way
                job.ended, job.status = time.time(), "done"
            else:
                job.ended, job.status = time.time(), "failed"
                job.error = job.error or ("stopped" if self.closed else failure_line(job.log, code))
        finally:
            with self.lock:
                self.busy.discard(worker)
                if worker.alive and not self.closed:
                    self.idle.append(worker)
                else:
                    worker.end()

    def _run(self, job: Job, worker: Worker, argv: list[str]) -> int:
        """A step of a job in the worker, its output appended to the job's log; its exit status. The job ends when it
        has run for `time_limit` seconds (its worker with it)."""
        with self.lock:  # a job alone has every core; with others, its share
            sharing = sum(j.status in ("queued", "running") for j in self.jobs.values())
        threads = max(1, cpu_count() // min(self.slots, sharing))
        try:
            return worker.run(argv, job.log, threads, max(0.0, job.started + self.time_limit - time.time()))
        except TimeoutError:
            job.error = f"stopped: the job was still running after {self.time_limit:g} s, its time limit"
            return -1
        except OSError as e:  # its folder was removed meanwhile
            job.error = str(e)
            return -1

    def sweep(self) -> None:
        """Remove the jobs that ended over KEEP_SECONDS ago, and the oldest ended ones past MAX_KEPT."""
        with self.lock:
            ended = sorted((j for j in self.jobs.values() if j.ended), key=lambda j: j.ended)
            old = [j for j in ended if time.time() - j.ended > KEEP_SECONDS] + ended[: max(0, len(ended) - MAX_KEPT)]
            for job in old:
                self.jobs.pop(job.id, None)
                shutil.rmtree(job.folder, ignore_errors=True)

    def close(self) -> None:
        """Stop the running jobs and every worker, drop the queued jobs and remove every job's files."""
        with self.lock:
            self.closed = True
            workers = [*self.idle, *self.busy]
        for worker in workers:
            worker.end()
        if self.zygote is not None:
            self.zygote.end()
        self.runner.shutdown(wait=True, cancel_futures=True)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
