"""Teaching a model through the API: every bad request gets a 4xx that says what to fix; jobs train side by side up to
the workers, the others wait with their place, all are removed after a while and at shutdown; and a job on real
photos names photos it never saw, in a warm worker the next job reuses."""

from __future__ import annotations

import json
import sys
import time

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed (pip install -e '.[web]')")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx (in the dev extra)")

from starlette.testclient import TestClient  # noqa: E402

from petclassifier.models.checkpoint import load_checkpoint  # noqa: E402
from petclassifier.web import job_files, job_input, teach  # noqa: E402
from petclassifier.web.app import create_app  # noqa: E402
from petclassifier.web.teach import TrainJobs  # noqa: E402

from .conftest import LOCAL, SHARED, needs_shared  # noqa: E402
from .test_web import photo, run_dir, service, upload  # noqa: E402, F401  (module fixtures: a served model)

# stands in for `petclassifier train` where a test is about the jobs, not the training: sleeps, then writes best.pt
FAKE_TRAIN = ("import pathlib, sys, time; time.sleep(float(sys.argv[2])); run = pathlib.Path(sys.argv[1]); "
              "run.mkdir(parents=True); (run / 'best.pt').write_bytes(b'model'); "
              "sys.exit(print('error: class x has too few photos') or 2) if sys.argv[3] == 'fail' else None")


def photos(n: int, breed: str = "pug") -> list[tuple[str, bytes]]:
    return [(photo(breed, i).name, photo(breed, i).read_bytes()) for i in range(n)]


def two_classes(n: int = 3, **fields: str) -> dict:
    """A job's request: n pug and n Persian photos, labelled, with the other form fields given."""
    labels = json.dumps(["pug"] * n + ["cat"] * n)
    return {"files": upload(*photos(n), *photos(n, "Persian")), "data": {"labels": labels, **fields}}


def finished(client: TestClient, job: str, seconds: float = 300) -> dict:
    deadline = time.time() + seconds
    while (report := client.get(f"/api/train/{job}").json())["status"] in ("queued", "running"):
        assert time.time() < deadline, report
        time.sleep(0.2)
    return report


@pytest.fixture
def fake_jobs(monkeypatch, fake_worker):
    """Jobs whose training is FAKE_TRAIN: `seconds` long, failing when the job's epochs are 13; one at a time."""
    def command(self, job):
        return [sys.executable, "-c", FAKE_TRAIN, str(job.run), "1", "fail" if job.options.get("epochs") == 13 else ""]

    def doctor_command(self, job):  # its findings: the second photo of the first class looks like the other
        found = {"label_issues": [{"path": str(job.folder / "photos/train/x/0001.jpg"), "given": "cat",
                                   "suggested": "pug", "score": 0.9}], "duplicates": [], "not_pets": []}
        return [sys.executable, "-c", f"open({str(job.folder / 'doctor.json')!r}, 'w').write({json.dumps(found)!r})"]

    monkeypatch.setattr(TrainJobs, "command", command)
    monkeypatch.setattr(TrainJobs, "doctor_command", doctor_command)
    jobs = TrainJobs("cpu", workers=1)
    yield jobs
    jobs.close()


def test_bad_teaching_requests_get_a_4xx_that_says_what_to_fix(service, monkeypatch):  # noqa: F811
    client = TestClient(create_app(service), base_url=LOCAL)
    pug, text = photos(1)[0], ("notes.txt", b"not a photo")
    monkeypatch.setattr(job_input, "MAX_JOB_PHOTOS", 5)

    def train(files, labels=None, **fields):
        data = {**fields, **({"labels": labels if isinstance(labels, str) else json.dumps(labels)} if labels else {})}
        return client.post("/api/train", files=upload(*files), data=data)

    cases = [
        (train([pug, pug]), 400, "'labels' must be a JSON list"),
        (train([pug, pug], "cat, dog"), 400, "'labels' must be a JSON list"),
        (train([pug, pug], ["a", "b", "c"]), 400, "'labels' names 3 classes for 2 photos"),
        (train([pug] * 4, ["pug"] * 4), 400, "only one class ('pug')"),
        (train([pug] * 4, ["pug", "pug", " ", "x"]), 400, "a class has no name"),
        (train([pug] * 4, ["pug", "pug", "../up", "../up"]), 400, "class name '../up'"),
        (train([pug] * 3, ["pug", "pug", "cat"]), 400, "class 'cat' has 1 photo"),
        (train([pug, pug, text, pug], ["pug", "pug", "cat", "cat"]), 400, "notes.txt (not an image"),
        (train([pug] * 6, ["pug", "cat"] * 3), 413, "at most 5"),
        (train([pug] * 4, ["pug", "cat"] * 2, epochs="many"), 400, "epochs 'many': give a whole number"),
        (train([pug] * 4, ["pug", "cat"] * 2, lr="5"), 400, "lr '5'"),
        (client.post("/api/train", data={"labels": "[]"}), 400, "multipart/form-data"),
        (client.get("/api/train/nothing"), 404, "no training job 'nothing'"),
        (client.get("/api/train/nothing/checkpoint"), 404, "no training job"),
        (client.post("/api/predict", files=upload(pug), data={"job": "nothing"}), 404, "no training job"),
        (client.post("/api/explain", files=upload(pug), data={"job": "nothing"}), 404, "no training job"),
    ]
    for answer, status, words in cases:
        assert answer.status_code == status and words in answer.json()["error"], (answer.status_code, answer.text)


def test_jobs_queue_for_the_workers_fail_with_their_reason_and_are_removed(service, fake_jobs, monkeypatch):  # noqa: F811
    client = TestClient(create_app(service, fake_jobs), base_url=LOCAL)
    first = client.post("/api/train", **two_classes()).json()["job"]
    second = client.post("/api/train", **two_classes(epochs="13")).json()["job"]
    waiting = client.get(f"/api/train/{second}").json()
    assert waiting["status"] == "queued" and waiting["place"] == 1 and waiting["at_once"] == 1  # behind the first
    report = client.get(f"/api/train/{first}").json()
    assert report["status"] == "running" and report["classes"] == [{"name": "cat", "photos": 3},
                                                                     {"name": "pug", "photos": 3}]
    answer = client.post("/api/predict", files=upload(photos(1)[0]), data={"job": first})
    assert answer.status_code == 409 and "is running" in answer.json()["error"]
    assert client.get(f"/api/train/{first}/checkpoint").status_code == 409
    monkeypatch.setattr(teach, "MAX_WAITING", 4)
    for _ in range(teach.MAX_WAITING - 1):  # the queue fills up: the next job is told to come back
        client.post("/api/train", **two_classes())
    full = client.post("/api/train", **two_classes())
    assert full.status_code == 503 and full.headers["Retry-After"] and "waiting" in full.json()["error"]

    done = finished(client, first)
    assert done["status"] == "done" and done["checkpoint"] == f"/api/train/{first}/checkpoint"
    assert done["doctor"] == {"label_issues": [{"photo": 1, "given": "cat", "suggested": "pug", "score": 0.9}],
                              "duplicates": [], "not_pets": []}  # photos named by their place in the upload
    assert client.get(done["checkpoint"]).content == b"model"
    failed = finished(client, second)
    assert failed["status"] == "failed" and failed["error"] == "class x has too few photos"
    assert failed["options"] == {"epochs": 13}

    folder = fake_jobs.jobs[first].folder
    assert sorted(p.name for p in (folder / "photos" / "train" / "pug").iterdir()) == ["0000.jpg", "0001.jpg",
                                                                                      "0002.jpg"]
    monkeypatch.setattr(teach, "KEEP_SECONDS", 0)  # an hour later
    assert client.get(f"/api/train/{first}").status_code == 404 and not folder.exists()
    fake_jobs.close()  # the server's shutdown: the queued jobs are dropped and every file removed
    assert not fake_jobs.root.exists()


def test_jobs_train_at_once_up_to_the_workers_and_the_next_waits_with_its_place(service, fake_worker, monkeypatch):  # noqa: F811
    def command(self, job):  # trains for 3 s, and says on how many threads
        return [sys.executable, "-c", FAKE_TRAIN, str(job.run), "3", ""]

    monkeypatch.setattr(TrainJobs, "command", command)
    monkeypatch.setattr(TrainJobs, "doctor_command", lambda self, job: [sys.executable, "-c", "pass"])
    jobs = TrainJobs("cpu", workers=2)
    try:
        client = TestClient(create_app(service, jobs), base_url=LOCAL)
        ids = [client.post("/api/train", **two_classes(2)).json()["job"] for _ in range(3)]
        time.sleep(1)
        reports = [client.get(f"/api/train/{job}").json() for job in ids]
        assert [(r["status"], r["place"]) for r in reports] == [("running", None), ("running", None), ("queued", 1)]
        assert all(finished(client, job)["status"] == "done" for job in ids)
        assert jobs.started_workers == 2 and len(jobs.idle) == 2  # the third job ran on a worker the others warmed
        started = sorted(jobs.jobs[job].started for job in ids)
        assert started[1] - started[0] < 1 <= started[2] - started[1]
    finally:
        jobs.close()
    deadline = time.time() + 10
    while any(job_files.alive(w.pid) for w in jobs.idle):  # every worker ends with the server
        assert time.time() < deadline
        time.sleep(0.1)


@needs_shared
def test_a_job_on_ten_cats_and_ten_dogs_names_photos_it_never_saw(service, tmp_path):  # noqa: F811
    cats, dogs = (sorted((SHARED / "cats-vs-dogs" / split / kind).glob("*.jpg"))[:10]
                  for split, kind in (("train", "cats"), ("train", "dogs")))
    files = upload(*((p.name, p.read_bytes()) for p in cats + dogs))
    jobs = TrainJobs("cpu")
    with TestClient(create_app(service, jobs), base_url=LOCAL) as client:
        job = client.post("/api/train", files=files, data={"labels": json.dumps(["cat"] * 10 + ["dog"] * 10)})
        report = finished(client, job.json()["job"])
        assert report["status"] == "done", report
        assert report["recipe"]["epochs"] == len(report["epochs"]) and report["cross_fitted_confusion"]
        assert set(report["doctor"]) == {"label_issues", "duplicates", "not_pets"}, report["phase"]
        held = [p for kind in ("cats", "dogs") for p in sorted((SHARED / "cats-vs-dogs" / "val" / kind).glob("*"))[:10]]
        answers = client.post("/api/predict", files=upload(*((p.name, p.read_bytes()) for p in held)),
                              data={"job": report["job"]}).json()
        named = [a["predictions"][0]["label"] for a in answers]
        assert sum(n == t for n, t in zip(named, ["cat"] * 10 + ["dog"] * 10)) >= 19, named
        explained = client.post("/api/explain", files=upload((held[0].name, held[0].read_bytes())),
                                data={"job": report["job"]})
        assert explained.status_code == 200 and explained.headers["X-Class"] == "cat"
        (tmp_path / "taught.pt").write_bytes(client.get(report["checkpoint"]).content)
        worker = jobs.idle[0].pid
        again = client.post("/api/train", **two_classes(3, epochs="2")).json()["job"]
        assert finished(client, again)["status"] == "done"
        assert jobs.started_workers == 1 and jobs.idle[0].pid == worker  # the warm worker trained it too
    assert jobs.closed and load_checkpoint(tmp_path / "taught.pt")["class_names"] == ["cat", "dog"]


def test_with_no_model_served_the_page_only_teaches(tmp_path):
    import subprocess

    from petclassifier.web.service import NO_MODEL, PhotoService

    client = TestClient(create_app(PhotoService(None, "cpu")), base_url=LOCAL)
    assert client.get("/api/health").json() == {"status": "ok", "model": None, "classes": 0,
                                                "teaching": {"ready_workers": 0, "at_once": teach.worker_slots()}}
    assert client.get("/api/model").status_code == 404 and client.get("/api/model").json()["error"] == NO_MODEL
    answer = client.post("/api/predict", files=upload(photos(1)[0]))
    assert answer.status_code == 409 and answer.json()["error"] == NO_MODEL
    assert client.get("/").status_code == 200
    # a first `serve` where nothing was trained yet starts, and says so
    server = subprocess.Popen([sys.executable, "-m", "petclassifier", "serve", "--port", "0"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert line.startswith("serving no model yet (the page teaches one) at http://127.0.0.1:"), line + err
    assert "no --checkpoint given and no runs/*/best.pt: the page will teach a model" in err
