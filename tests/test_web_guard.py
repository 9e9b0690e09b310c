"""The server is safe by default, as Jupyter's is: names of this computer only, no changes from another site's page,
a token beyond loopback; and teaching jobs end with the server, also when it is killed, and at their time limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed (pip install -e '.[web]')")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx (in the dev extra)")

import httpx  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from petclassifier.web import teach  # noqa: E402
from petclassifier.web.app import create_app  # noqa: E402
from petclassifier.web.service import PhotoService  # noqa: E402
from petclassifier.web.teach import TrainJobs  # noqa: E402

from .conftest import LOCAL, ROOT  # noqa: E402
from .test_teach import photos, two_classes  # noqa: E402
from .test_web import upload  # noqa: E402

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups and signals as POSIX has them")


@pytest.fixture(scope="module")
def teaching_only():
    return PhotoService(None, "cpu")  # no model to load: the guard is in front of every route alike


def test_a_foreign_host_and_a_post_from_another_site_are_refused_and_the_page_s_own_requests_work(teaching_only):
    client = TestClient(create_app(teaching_only), base_url=LOCAL)
    assert client.get("/api/health").status_code == 200
    assert client.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "[::1]:8000"}).status_code == 200
    rebound = client.get("/api/health", headers={"Host": "evil.example"})  # DNS re-binding: a name set to 127.0.0.1
    assert rebound.status_code == 403 and "'evil.example' is not a name of this server" in rebound.json()["error"]
    job = two_classes(1)  # one photo a class: refused for its size (400) once past the guard
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        cross = client.post("/api/train", files=job["files"], data=job["data"], headers={"Origin": origin})
        assert cross.status_code == 403 and "another site" in cross.json()["error"], origin
    cross = client.post("/api/train", files=job["files"], data=job["data"], headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    for own in ({"Origin": LOCAL}, {"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"}, {}):  # the page; curl
        answer = client.post("/api/train", files=job["files"], data=job["data"], headers=own)
        assert answer.status_code == 400 and "at least 2" in answer.json()["error"], own
    predict = client.post("/api/predict", files=upload(*photos(1)), headers={"Origin": "http://evil.example"})
    assert predict.status_code == 403


def test_beyond_loopback_every_request_needs_the_token_kept_in_a_cookie_after_the_first(teaching_only):
    client = TestClient(create_app(teaching_only, local_only=False, token="s3cret"), base_url="http://192.0.2.7:8000")
    for path in ("/", "/api/health", "/static/page.js"):
        refused = client.get(path)
        assert refused.status_code == 403 and "needs its token" in refused.json()["error"], path
    assert client.get("/?token=wrong").status_code == 403
    first = client.get("/?token=s3cret")
    assert first.status_code == 200 and "HttpOnly" in first.headers["set-cookie"]
    assert client.get("/api/health").status_code == 200  # the cookie the first visit set
    bare = TestClient(create_app(teaching_only, local_only=False, token="s3cret"), base_url="http://192.0.2.7:8000")
    assert bare.get("/api/health", headers={"Authorization": "token s3cret"}).status_code == 200
    assert bare.get("/api/health").status_code == 403


def job_processes(folder: Path) -> list[int]:
    """Processes whose command line names a path under `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(folder) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc")
def test_a_server_killed_mid_job_leaves_no_job_process_and_the_next_start_sweeps_its_files(tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "petclassifier", "serve", "--port", "0", "--device", "cpu"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = server.stdout.readline()
        while "serving" not in line:
            assert line, "the server ended before it served"
            line = server.stdout.readline()
        address = line.split(" at ")[1].split()[0].rstrip("/")
        job = two_classes(3)
        answer = httpx.post(f"{address}/api/train", files=job["files"], data=job["data"], timeout=60)
        assert answer.status_code == 202, answer.text
        report, deadline = {}, time.time() + 120
        while report.get("status") != "running" or not report.get("phase"):  # training has printed a line
            assert time.time() < deadline and report.get("status") in (None, "queued", "running"), json.dumps(report)
            time.sleep(0.2)
            report = httpx.get(f"{address}/api/train/{answer.json()['job']}").json()
        assert "/tmp" not in json.dumps(report) and str(tmp_path) not in json.dumps(report)  # no server paths
        roots = [r for r in Path(teach.tempfile.gettempdir()).glob(f"{teach.ROOT_PREFIX}*")
                 if (r / teach.OWNER).is_file() and (r / teach.OWNER).read_text().strip() == str(server.pid)]
        assert len(roots) == 1 and job_processes(roots[0])
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    deadline = time.time() + 30
    while job_processes(roots[0]):
        assert time.time() < deadline, "a job process outlived its server"
        time.sleep(0.2)
    assert roots[0].is_dir()  # left by the killed server: the next one removes it
    TrainJobs("cpu").close()
    assert not roots[0].exists()


def test_a_hung_job_is_stopped_at_its_time_limit_and_the_next_one_runs(teaching_only, fake_worker, monkeypatch):
    def command(self, job):  # hangs, with a child of its own (both named by the job's folder): the group must go
        hang = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', "
                "sys.argv[1]]); time.sleep(600)")
        done = "import pathlib, sys; pathlib.Path(sys.argv[1], 'run').mkdir(); pathlib.Path(sys.argv[1], 'run', " \
            "'best.pt').write_bytes(b'model')"
        return [sys.executable, "-c", hang if job.options.get("epochs") == 13 else done, str(job.folder)]

    monkeypatch.setattr(TrainJobs, "command", command)
    monkeypatch.setattr(TrainJobs, "doctor_command", lambda self, job: [sys.executable, "-c", "pass"])
    jobs = TrainJobs("cpu", time_limit=3, workers=1)
    try:
        client = TestClient(create_app(teaching_only, jobs), base_url=LOCAL)
        hung = client.post("/api/train", **two_classes(2, epochs="13")).json()["job"]
        after = client.post("/api/train", **two_classes(2)).json()["job"]
        deadline = time.time() + 60
        while client.get(f"/api/train/{after}").json()["status"] in ("queued", "running"):
            assert time.time() < deadline
            time.sleep(0.2)
        stopped = client.get(f"/api/train/{hung}").json()
        assert stopped["status"] == "failed" and "its time limit" in stopped["error"], stopped
        assert client.get(f"/api/train/{after}").json()["status"] == "done"
        assert not job_processes(jobs.root / hung)
    finally:
        jobs.close()


def test_the_folder_of_a_server_still_running_is_kept(tmp_path):
    alive = TrainJobs("cpu")
    try:
        root = alive.root
        TrainJobs("cpu").close()  # another server starting: this one lives, its folder stays
        assert root.is_dir() and (root / teach.OWNER).read_text().strip() == str(os.getpid())
    finally:
        alive.close()
    assert not root.exists()
    assert ROOT.is_dir()
