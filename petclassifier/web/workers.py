"""Warm workers for the teaching jobs of `serve`: processes that run the jobs' steps (`petclassifier train`, then
`petclassifier doctor`) one after another within themselves, Python, PyTorch, the network and its ONNX Runtime
session loaded once, so that a job costs its frozen passes and its head, not a new Python and PyTorch each; and the
server's handles on them.

The server starts one zygote (`python -m petclassifier.cli.teach_worker FOLDER DEVICE`), which imports all a job needs
and then forks a worker for each request, in a process group of its own: the workers share the memory of that
import. The server writes a step on a worker's stdin as a JSON line, {"argv": [...], "log": PATH, "threads": N}; the
worker runs `petclassifier ARGV` with its output appended to the log (the page reads its last line), its frozen
passes on N threads, and answers {"code": EXIT_STATUS} on its stdout. Its first line, {"ready": true}, says it has
warmed up. When its stdin closes (the server has ended, however it ended) the worker ends its process group at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from .parent import end_group, lines_from_parent

WARM_UP_PHOTOS = 4  # a class: a tiny job of random photos, on which the worker loads all a real job needs
WORKER_BYTES = 1536 * 2**20  # a worker's memory at most, training a job of 500 photos: what the free memory must hold


class Zygote:
    """The server's handle on the process whose forks are the workers: PyTorch and the package are imported there
    once, and the memory of that import (300 MB, most of it PyTorch's own) is shared by every worker it forks."""

    command = [sys.executable, "-m", "petclassifier.cli.teach_worker"]  # + its folder and device

    def __init__(self, folder: Path, device: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.socket, theirs = socket.socketpair()  # its stdin: the requests carry each worker's two pipes
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a step's lines reach its log as they are printed
        with open(folder / "workers.log", "ab") as log:  # what the workers print outside the steps
            self.process = subprocess.Popen([*self.command, str(folder), device], stdin=theirs, stdout=log,
                                            stderr=log, env=env, start_new_session=True)
        theirs.close()
        self.replies = self.socket.makefile("rb")
        self.lock = threading.Lock()

    def fork(self, steps: int, replies: int) -> int:
        """A new worker reading its steps from the pipe `steps` and answering on `replies`; its process id (it then
        warms up). Waits while the zygote imports."""
        with self.lock:
            socket.send_fds(self.socket, [b"fork"], [steps, replies])
            answer = self.replies.readline()
        if not answer:
            raise OSError("the process that starts the teaching workers has ended (see workers.log)")
        return int(answer)

    def end(self) -> None:
        """End the zygote (the workers end when their own pipes close)."""
        self.socket.close()
        end_group(self.process)


class Worker:
    """The server's handle on one warm worker, forked by the zygote in a process group of its own."""

    def __init__(self, zygote: Zygote):
        steps, self.steps = os.pipe()
        self.replies, replies = os.pipe()
        self.pid: int | None = None
        self.ready = threading.Event()
        self.alive = True
        threading.Thread(target=self._start, args=(zygote, steps, replies), name="worker-ready", daemon=True).start()

    def _start(self, zygote: Zygote, steps: int, replies: int) -> None:
        """Have the zygote fork the worker, then wait for it to say it is ready."""
        try:
            self.pid = zygote.fork(steps, replies)
        except OSError:
            self.alive = False
        finally:
            os.close(steps)  # the worker's ends: theirs now
            os.close(replies)
        self.alive = self.alive and bool(self._line())  # ended before it was ready (workers.log says why)
        self.ready.set()

    def _line(self) -> bytes:
        line = b""
        with contextlib.suppress(OSError):
            while not line.endswith(b"\n") and (chunk := os.read(self.replies, 1)):
                line += chunk
        return line

    def run(self, argv: list[str], log: Path, threads: int, timeout: float) -> int:
        """Run `petclassifier ARGV` in the worker; its exit status. TimeoutError past `timeout` seconds (the worker is
        then ended); -1 where the worker ended meanwhile."""
        deadline = time.monotonic() + timeout
        if not self.ready.wait(timeout):
            self.end()
            raise TimeoutError
        if not self.alive:
            return -1
        try:
            os.write(self.steps, (json.dumps({"argv": argv, "log": str(log), "threads": threads}) + "\n").encode())
        except OSError:  # it has ended (or was ended by `end`)
            self.alive = False
            return -1
        readable, _, _ = select.select([self.replies], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            self.end()
            raise TimeoutError
        line = self._line()
        if not line:
            self.alive = False
            return -1
        return json.loads(line)["code"]

    def end(self) -> None:
        """End the worker and all it started (the zygote reaps it)."""
        self.alive = False
        for fd in (self.steps, self.replies):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


def cpu_count() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_slots() -> int:
    """Jobs trained at once: one a core, as many as the free memory holds (WORKER_BYTES each), at least one."""
    try:
        free = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):  # not Linux: the cores decide
        return cpu_count()
    return max(1, min(cpu_count(), free // WORKER_BYTES))


def serve_forks(worker_main) -> None:
    """Fork a worker, `worker_main(n)`, for each request on stdin (a socket; a request carries the worker's pipes:
    its steps and its replies), answering its process id; return when the server closes its end."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # ended workers are reaped by the kernel
    control = socket.socket(fileno=0)
    count = 0
    while True:
        message, fds, _, _ = socket.recv_fds(control, 16, 2)
        if not message:
            return
        count += 1
        pid = os.fork()
        if pid == 0:  # the worker: in a group of its own, its pipes as stdin and stdout
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            control.close()
            os.setpgid(0, 0)
            for fd, target in zip(fds, (0, 1)):
                os.dup2(fd, target)
                os.close(fd)
            try:
                worker_main(count)
            except BaseException:
                traceback.print_exc()  # into workers.log
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        control.sendall(f"{pid}\n".encode())


def work(folder: Path, device: str, command) -> None:
    """A worker: warm up, say so, then run each step the server sends until it ends."""
    from ..runtime import release_free_memory

    steps = lines_from_parent()  # from now on the worker ends with the server, warming up or not
    folder.mkdir(exist_ok=True)  # not its parents: a server that ended meanwhile removed them; the worker ends here
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray output goes to the workers' log, never into the replies
    warm_up(folder / "warm-up", device, command, cpu_count())  # as the first job, alone, runs
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in steps:
        step = json.loads(line)
        code = run_step(command, step["argv"], Path(step["log"]), step["threads"])
        release_free_memory()
        replies.write(json.dumps({"code": code}) + "\n")


def run_step(command, argv: list[str], log: Path, threads: int) -> int:
    """`command(argv)` (the CLI's main), its frozen passes on `threads` threads, its output and errors appended to
    `log`."""
    import torch

    from ..engine import backends

    # PyTorch's work in a job is small (the head, the crops): on one thread. On two, its threads waited for each other
    # whenever another job held the other core, and a 10 s job took 60 s
    torch.set_num_threads(1)
    backends.SESSION_THREADS = threads
    with open(log, "ab") as out, output_to(out.fileno()):
        try:
            return command(argv)
        except SystemExit as e:  # the parser's one-line errors
            return e.code if isinstance(e.code, int) else 2
        except Exception:  # a fault of this step: said in its log, and the worker goes on with the next
            traceback.print_exc()
            return 1


@contextlib.contextmanager
def output_to(fd: int):
    """Standard output and error (the descriptors: PyTorch's and ONNX Runtime's too) go to `fd` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for target, original in zip((1, 2), saved):
            os.dup2(original, target)
            os.close(original)


def warm_up(folder: Path, device: str, command, threads: int) -> None:
    """Train on a tiny folder of random photos and check it, as a job does: what a job loads once (the modules, the
    network's weights, its ONNX copy, exported here if not cached yet, and the runtime's session) is then loaded."""
    import torch
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for kind in ("a", "b"):
        (folder / "photos" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(WARM_UP_PHOTOS):
            pixels = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=generator)
            Image.fromarray(pixels.numpy()).save(folder / "photos" / kind / f"{i}.png")
    log = folder / "warm-up.log"
    try:
        run_step(command, ["train", "--dataset", "folder", "--data-dir", str(folder / "photos"), "--out",
                           str(folder / "run"), "--device", device, "--epochs", "1", "--augment-views", "2",
                           "--workers", "0", "--no-curves"], log, 1)  # a job's session on one thread, beside others
        run_step(command, ["doctor", str(folder / "photos"), "--dataset", "folder", "--device", device,
                           "--workers", "0"], log, threads)  # and on all, alone
    finally:
        shutil.rmtree(folder, ignore_errors=True)
