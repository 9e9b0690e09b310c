"""Load on `petclassifier serve`: requests per second and latency with concurrent clients, and the server's memory
as the requests add up. Standard library only: the server runs in its own process, as users start it."""

from __future__ import annotations

import http.client
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from petclassifier.errors import UserError


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """(body, content type) of a form with a `file` field per (name, bytes) and the plain fields, as a browser
    sends it."""
    boundary = uuid.uuid4().hex
    parts = [f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data for name, data in files]
    parts += [f'Content-Disposition: form-data; name="{key}"\r\n\r\n{value}'.encode()
              for key, value in (fields or {}).items()]
    body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rss_mb(pid: int) -> float:
    """A process's resident memory now (Linux), in MB; 0 for one that has ended meanwhile."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:")), 0.0)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process's children and theirs (a teaching job and its decoding workers), in MB."""
    try:
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except OSError:
        return 0.0
    return sum(rss_mb(child) + tree_rss_mb(child) for child in children)


def send(url: str, photo: Path, count: int, clients: int) -> tuple[list[float], int]:
    """POST the photo to /api/predict `count` times from `clients` threads, each on one kept-alive connection:
    (each request's seconds, in the order they finished; how many 503 answers were waited out). A busy server's 503
    is asked again after its Retry-After, as the page does (the wait counts in the latency); any other answer but
    200 stops the measurement."""
    body, content_type = multipart([(photo.name, photo.read_bytes())])
    address = urlsplit(url)
    latencies, failures, busy, lock = [], [], [0], threading.Lock()
    left = iter(range(count))

    def answered(connection: http.client.HTTPConnection) -> str | None:
        """None once the request got its 200; else what went wrong."""
        while True:
            try:
                connection.request("POST", "/api/predict", body, {"Content-Type": content_type})
                answer = connection.getresponse()
                text = answer.read()
            except OSError as e:
                return f"{type(e).__name__}: {e}"
            if answer.status != 503:
                return None if answer.status == 200 else f"{answer.status} {text[:200]!r}"
            with lock:
                busy[0] += 1
            time.sleep(float(answer.getheader("Retry-After", "1")))

    def client() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
        while True:
            with lock:
                if next(left, None) is None or failures:
                    break
            started = time.perf_counter()
            failure = answered(connection)
            with lock:
                latencies.append(time.perf_counter() - started)
                if failure:
                    failures.append(failure)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"the server answered {failures[0]}")
    return latencies, busy[0]


@contextmanager
def started_server(checkpoint: str, *flags: str, stderr=subprocess.DEVNULL) -> Iterator[tuple[subprocess.Popen, str]]:
    """`petclassifier serve --checkpoint CHECKPOINT --port 0 FLAGS` in its own process, as a user starts it:
    (the process, the first line it prints: "serving <checkpoint> (...) at <url>  (Ctrl+C stops)"); stopped on exit."""
    process = subprocess.Popen([sys.executable, "-m", "petclassifier", "serve", "--checkpoint", checkpoint, "--port",
                                "0", *flags], stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        yield process, process.stdout.readline()
    finally:
        process.terminate()
        process.wait(30)


def measure(checkpoint: str, photo: Path, requests: int = 1000, clients: int = 4, device: str = "auto") -> dict:
    """Start the server, send the first tenth of the requests (warm-up; memory noted), then the rest, timed."""
    if not photo.is_file():
        raise UserError(f"no such photo: {photo}")
    warm_up = max(1, requests // 10)
    with started_server(checkpoint, "--device", device) as (server, line):
        if " at http://" not in line:
            raise UserError(f"the server did not start: {line.strip() or 'see petclassifier serve'}")
        url = line.split(" at ")[-1].split()[0]
        send(url, photo, warm_up, clients)
        rss_warm = rss_mb(server.pid)
        started = time.perf_counter()
        latencies, busy = send(url, photo, requests - warm_up, clients)
        seconds = time.perf_counter() - started
        rss_end = rss_mb(server.pid)
    cuts = statistics.quantiles(latencies, n=100)
    return {"checkpoint": checkpoint, "photo": photo.name, "clients": clients, "requests": requests,
            "timed_requests": len(latencies), "busy_answers": busy,
            "requests_per_second": round(len(latencies) / seconds, 2),
            "latency_ms": {"p50": round(1000 * cuts[49], 1), "p95": round(1000 * cuts[94], 1),
                           "p99": round(1000 * cuts[98], 1), "max": round(1000 * max(latencies), 1)},
            "rss_mb": {f"after_{warm_up}": round(rss_warm, 1), f"after_{requests}": round(rss_end, 1)},
            "rss_growth": round(rss_end / rss_warm - 1, 4)}


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (Linux VmHWM), in MB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:"))


def burst(checkpoint: str, megabytes: float, clients: int, device: str = "auto") -> dict:
    """`clients` uploads at once, each a photo of random pixels (a PNG of `megabytes`, which no compression makes
    smaller), after one warm-up: every answer's seconds, and how far the server's peak memory rose above it."""
    side = int((megabytes * 1e6 / 3) ** 0.5)
    with tempfile.TemporaryDirectory() as folder, started_server(checkpoint, "--device", device) as (server, line):
        photo = Path(folder) / "noise.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(photo)
        size_mb = photo.stat().st_size / 1e6
        url = line.split(" at ")[-1].split()[0]
        send(url, photo, 1, 1)
        before = rss_mb(server.pid)
        started = time.perf_counter()
        latencies, busy = send(url, photo, clients, clients)
        seconds = time.perf_counter() - started
        peak = peak_rss_mb(server.pid)
    return {"checkpoint": checkpoint, "upload_mb": round(size_mb, 1), "clients": clients,
            "answered": len(latencies), "busy_answers": busy, "seconds": round(seconds, 1),
            "latency_s": {"min": round(min(latencies), 1), "max": round(max(latencies), 1)},
            "rss_mb": {"before": round(before), "peak": round(peak)}, "peak_growth_mb": round(peak - before)}
