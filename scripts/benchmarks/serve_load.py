"""Load on `petclassifier serve`: requests per second and latency with concurrent clients, and the server's memory
as the requests add up. Standard library only: the server runs in its own process, as users start it."""

from __future__ import annotations

import http.client
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from petclassifier.errors import UserError


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    """(body, content type) of a form with one `file` field, as a browser sends a photo."""
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n' \
           "Content-Type: application/octet-stream\r\n\r\n"
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rss_mb(pid: int) -> float:
    """A process's resident memory now (Linux), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def send(url: str, photo: Path, count: int, clients: int) -> list[float]:
    """POST the photo to /api/predict `count` times from `clients` threads, each on one kept-alive connection;
    each request's seconds, in the order they finished. Any answer but 200 stops the measurement."""
    body, content_type = multipart(photo.name, photo.read_bytes())
    address = urlsplit(url)
    latencies, failures, lock = [], [], threading.Lock()
    left = iter(range(count))

    def client() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
        while True:
            with lock:
                if next(left, None) is None or failures:
                    break
            started = time.perf_counter()
            try:
                connection.request("POST", "/api/predict", body, {"Content-Type": content_type})
                answer = connection.getresponse()
                failure = None if answer.status == 200 else f"{answer.status} {answer.read()[:200]!r}"
                answer.read()
            except OSError as e:
                failure = f"{type(e).__name__}: {e}"
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
    return latencies


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
        latencies = send(url, photo, requests - warm_up, clients)
        seconds = time.perf_counter() - started
        rss_end = rss_mb(server.pid)
    cuts = statistics.quantiles(latencies, n=100)
    return {"checkpoint": checkpoint, "photo": photo.name, "clients": clients, "requests": requests,
            "timed_requests": len(latencies), "requests_per_second": round(len(latencies) / seconds, 2),
            "latency_ms": {"p50": round(1000 * cuts[49], 1), "p95": round(1000 * cuts[94], 1)},
            "rss_mb": {f"after_{warm_up}": round(rss_warm, 1), f"after_{requests}": round(rss_end, 1)},
            "rss_growth": round(rss_end / rss_warm - 1, 4)}
