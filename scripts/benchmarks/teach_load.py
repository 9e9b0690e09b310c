"""Teaching through `petclassifier serve`, as the page does: a job of k photos per class, timed from the upload to
its model, then scored on held-out photos through the same API. Standard library only."""

from __future__ import annotations

import http.client
import json
import random
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.serve_load import multipart, rss_mb, started_server, tree_rss_mb
from petclassifier.images import photos_under


def request(url: str, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> dict:
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=600)
    connection.request(method, path, body, {"Content-Type": content_type} if content_type else {})
    answer = connection.getresponse()
    reply = json.loads(answer.read())
    connection.close()
    if answer.status >= 400:
        raise RuntimeError(f"{method} {path}: {answer.status} {reply}")
    return reply


def drawn(folder: Path, per_class: int, rng: random.Random) -> list[tuple[Path, str]]:
    """`per_class` photos of each class folder under `folder`, drawn at random, with their class."""
    return [(Path(p), c.name) for c in sorted(folder.iterdir()) if c.is_dir()
            for p in rng.sample(photos_under(c), per_class)]


def teach_once(url: str, server_pid: int, train: list[tuple[Path, str]], held: list[tuple[Path, str]]) -> dict:
    """One job: upload, follow until done (memory sampled), then name the held-out photos with its model."""
    body, kind = multipart([(p.name, p.read_bytes()) for p, _ in train],
                           {"labels": json.dumps([label for _, label in train])})
    started = time.perf_counter()
    job = request(url, "POST", "/api/train", body, kind)["job"]
    server_mb, training_mb = rss_mb(server_pid), 0.0
    while (report := request(url, "GET", f"/api/train/{job}"))["status"] in ("queued", "running"):
        training_mb = max(training_mb, tree_rss_mb(server_pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    if report["status"] != "done":
        raise RuntimeError(f"job {job} failed: {report['error']}")
    right, answer_seconds = 0, 0.0
    for i in range(0, len(held), 64):
        chunk = held[i : i + 64]
        body, kind = multipart([(p.name, p.read_bytes()) for p, _ in chunk], {"job": job})
        t = time.perf_counter()
        answers = request(url, "POST", "/api/predict", body, kind)
        answer_seconds += time.perf_counter() - t
        right += sum(a["predictions"][0]["label"] == label for a, (_, label) in zip(answers, chunk))
    return {"photos": len(train), "seconds_to_model": round(seconds, 1), "server_reported_seconds": report["seconds"],
            "epochs": len(report["epochs"]), "held_out": len(held), "held_out_right": right,
            "cross_fitted_confusion": report["cross_fitted_confusion"],
            "held_out_ms_per_photo": round(1000 * answer_seconds / len(held), 1),
            "server_rss_mb": {"before": round(server_mb), "after": round(rss_mb(server_pid))},
            "training_peak_rss_mb": round(training_mb)}


def measure(checkpoint: str, data: Path, per_class: int, held_per_class: int, draws: int) -> dict:
    """`draws` jobs one after another on one server (the first from a cold cache when the caller's is empty)."""
    runs = []
    with started_server(checkpoint, "--device", "cpu") as (server, line):
        url = line.split(" at ")[-1].split()[0]
        for draw in range(draws):
            rng = random.Random(draw)
            runs.append({"draw": draw, **teach_once(url, server.pid, drawn(data / "train", per_class, rng),
                                                    drawn(data / "val", held_per_class, rng))})
    return {"checkpoint": checkpoint, "data": str(data), "per_class": per_class, "runs": runs}
