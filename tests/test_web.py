"""The web page's JSON API through Starlette's test client (and one real server): the same answers as
`predict --json`, in upload order, and an answer for every bad input without the server going down."""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="the web extra is not installed (pip install -e '.[web]')")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx (in the dev extra)")

from starlette.testclient import TestClient  # noqa: E402

from petclassifier.cli import main  # noqa: E402
from petclassifier.data.transforms import Preprocessing  # noqa: E402
from petclassifier.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from petclassifier.models.registry import build_model  # noqa: E402
from petclassifier.web.app import create_app  # noqa: E402
from petclassifier.web.limits import MAX_UPLOAD_BYTES  # noqa: E402
from petclassifier.web.service import PhotoService  # noqa: E402

from .conftest import LOCAL, SAMPLE  # noqa: E402
from .nested import approx_nested  # noqa: E402
from .photos import png_header  # noqa: E402

IMAGES = SAMPLE / "oxford-iiit-pet" / "images"
# breeds ImageNet knows, with its class index: their rows of the ImageNet classifier make a breed model untrained
ZERO_SHOT = {"Persian": 283, "Siamese": 284, "beagle": 162, "pug": 254}
SPECIES_OF = {"Persian": "cat", "Siamese": "cat", "beagle": "dog", "pug": "dog"}


def photo(breed: str, i: int = 0) -> Path:
    return sorted(IMAGES.glob(f"{breed}_*.jpg"))[i]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with a breed model of four ImageNet breeds (pretrained Lite0, head = ImageNet's rows for them),
    its learning curve and test accuracy, as training writes them."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", len(ZERO_SHOT), pretrained=True, imagenet_stages=0)
    imagenet_linear = model.imagenet[-1][-1]
    rows = torch.tensor(list(ZERO_SHOT.values()))
    with torch.no_grad():
        model.head[-1].weight.copy_(imagenet_linear.weight[rows])
        model.head[-1].bias.copy_(imagenet_linear.bias[rows])
    run = tmp_path_factory.mktemp("web") / "run"
    run.mkdir()
    save_checkpoint({"model_name": "efficientnet_lite0", "class_names": list(ZERO_SHOT), "task": "breed",
                     "species_of": SPECIES_OF, "preprocessing": Preprocessing.for_model("efficientnet_lite0", 160)
                     .as_dict(), "model_state": model.state_dict(), "imagenet_stages": 0,
                     "metrics": {"val_accuracy": 0.5}}, run / "best.pt")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "train_loss": 1 / e, "val_loss": 1.5 / e,
                                                           "val_accuracy": 0.2 * e, "lr": 0.1}) + "\n"
                                               for e in (1, 2, 3)))
    summary = {"checkpoint": str(run / "best.pt"), "test_accuracy": 0.875, "photos": {"test": 8}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture(scope="module")
def service(run_dir) -> PhotoService:
    return PhotoService(run_dir / "best.pt", device="cpu")


@pytest.fixture(scope="module")
def client(service) -> TestClient:
    return TestClient(create_app(service), base_url=LOCAL)


def upload(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", (name, data)) for name, data in files]


def bomb(tmp_path: Path, width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few bytes: a decompression bomb's header."""
    png_header(tmp_path / "bomb.png", width, height)
    return (tmp_path / "bomb.png").read_bytes()


def test_health_model_and_the_page_offline(client, run_dir):
    health = client.get("/api/health").json()
    assert health == {"status": "ok", "model": "efficientnet_lite0", "classes": 4,
                      "teaching": {"ready_workers": 0, "at_once": health["teaching"]["at_once"]}}
    assert health["teaching"]["at_once"] >= 1  # workers start with `serve`, or with the first job
    info = client.get("/api/model").json()
    assert info["task"] == "breed" and info["class_names"] == list(ZERO_SHOT) and info["not_a_pet"] is True
    assert info["accuracy"] == {"split": "test", "value": 0.875, "photos": 8}
    assert [row["val_accuracy"] for row in info["curve"]] == pytest.approx([0.2, 0.4, 0.6])
    assert info["checkpoint"] == "run/best.pt" and info["max_upload_bytes"] == MAX_UPLOAD_BYTES
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    names = ("app.js", "teach.js", "style.css")
    for name in names:
        assert f"/static/{name}" in page.text and client.get(f"/static/{name}").status_code == 200
    for text in (page.text, *(client.get(f"/static/{name}").text for name in names)):
        # nothing fetched from the internet (the SVG namespace is a name, never fetched)
        assert "//" not in text.replace("http://www.w3.org/2000/svg", "").replace("// ", "").replace("//\n", "")


def test_the_accuracy_falls_back_to_validation_without_the_run_s_summary(run_dir, tmp_path):
    alone = tmp_path / "copied"
    alone.mkdir()
    (alone / "model.pt").write_bytes((run_dir / "best.pt").read_bytes())
    info = TestClient(create_app(PhotoService(alone / "model.pt", "cpu")), base_url=LOCAL).get("/api/model").json()
    assert info["accuracy"] == {"split": "validation", "value": 0.5, "photos": None} and info["curve"] == []


def test_predict_answers_as_predict_json_does_in_upload_order_with_error_entries(client, run_dir, tmp_path, capsys):
    good = [photo("pug"), photo("Persian"), photo("beagle"), photo("Siamese")]
    truncated = good[0].read_bytes()[:4000]
    sent = [(good[0].name, good[0].read_bytes()), ("notes.txt", b"not a photo at all"), ("empty.jpg", b""),
            (good[1].name, good[1].read_bytes()), ("cut.jpg", truncated), (good[2].name, good[2].read_bytes()),
            ("bomb.png", bomb(tmp_path, 30_000, 30_000)), ("big.png", bomb(tmp_path, 10_000, 9_000)),
            (good[3].name, good[3].read_bytes())]
    answer = client.post("/api/predict", files=upload(*sent))
    assert answer.status_code == 200
    entries = answer.json()
    assert [e["path"] for e in entries] == [name for name, _ in sent]
    errors = {e["path"]: e["error"] for e in entries if "error" in e}
    assert set(errors) == {"notes.txt", "empty.jpg", "cut.jpg", "bomb.png", "big.png"}
    assert errors["notes.txt"].startswith("not an image") and errors["empty.jpg"] == "empty file (0 bytes)"
    assert "truncated" in errors["cut.jpg"]
    assert errors["bomb.png"] == "900,000,000 pixels is over the 89,478,485 pixel limit"
    assert errors["big.png"] == "90,000,000 pixels is over the 89,478,485 pixel limit"

    assert main(["predict", "--checkpoint", str(run_dir), "--json", "--device", "cpu", *map(str, good)]) == 0
    expected = json.loads(capsys.readouterr().out)
    readable = [e for e in entries if "error" not in e]
    for got, want in zip(readable, expected, strict=True):
        assert got["path"] == Path(want["path"]).name
        assert {**got, "path": None} == approx_nested({**want, "path": None}, abs=1e-5)
    assert [e["predictions"][0]["label"] for e in readable] == ["pug", "Persian", "beagle", "Siamese"]
    assert [e["species"][0]["label"] for e in readable] == ["dog", "cat", "dog", "cat"]
    assert client.get("/api/health").status_code == 200  # still serving


def test_top_k_and_a_phone_photo_turned_by_its_exif(client):
    upright = Image.open(photo("pug")).convert("RGB")
    sideways = upright.rotate(90, expand=True)  # stored as a phone stores it, with EXIF "turn 90 degrees clockwise"
    exif = Image.Exif()
    exif[0x0112] = 6
    files = []
    for name, img, extra in (("upright.png", upright, {}), ("phone.png", sideways, {"exif": exif}),
                             ("no_exif.png", sideways, {})):
        buffer = io.BytesIO()
        img.save(buffer, "PNG", **extra)
        files.append((name, buffer.getvalue()))
    entries = client.post("/api/predict", files=upload(*files), data={"top_k": "2"}).json()
    assert [len(e["predictions"]) for e in entries] == [2, 2, 2]
    assert entries[0]["predictions"] == entries[1]["predictions"] != entries[2]["predictions"]


def test_heic_phone_photos_are_read_where_the_plugin_is_installed(client):
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif (web extra) reads HEIC")
    pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    Image.open(photo("pug")).convert("RGB").save(buffer, "HEIF", quality=90)
    (entry,) = client.post("/api/predict", files=upload(("IMG_0001.HEIC", buffer.getvalue()))).json()
    assert entry["predictions"][0]["label"] == "pug", entry


def test_uploads_over_the_limit_get_413_with_or_without_a_content_length(client):
    big = b"\xff\xd8" + bytes(50 * 10**6)  # 50 MB
    answer = client.post("/api/predict", files=upload(("huge.jpg", big)))
    assert answer.status_code == 413 and "over the limit of 32 MiB" in answer.json()["error"]

    def chunks():  # a body of unknown length, sent as it is produced
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"huge.jpg\"\r\n\r\n"
        for _ in range(50):
            yield bytes(10**6)

    streamed = client.post("/api/predict", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413 and "more than" in streamed.json()["error"]
    assert client.get("/api/health").status_code == 200


def test_bad_requests_get_one_line_json_errors(client):
    pug = (photo("pug").name, photo("pug").read_bytes())
    cases = [
        (client.post("/api/predict", data={"x": "1"}), 400, "multipart/form-data"),
        (client.post("/api/predict", content=b"{}", headers={"content-type": "application/json"}), 400, "multipart"),
        (client.post("/api/predict", files=[("photo", pug)]), 400, "no photo"),
        (client.post("/api/predict", files=upload(pug), data={"top_k": "0"}), 400, "top_k"),
        (client.post("/api/predict", files=upload(pug), data={"top_k": "²"}), 400, "top_k"),
        (client.post("/api/predict", files=upload(pug), data={"top_k": ""}), 400, "top_k"),
        (client.post("/api/predict", files=upload(*[pug] * 65)), 400, "Too many files"),
        (client.get("/api/predict"), 405, "Method Not Allowed"),
        (client.get("/api/nothing"), 404, "Not Found"),
        (client.post("/api/explain", files=upload(pug, pug)), 400, "one photo"),
        (client.post("/api/explain", files=upload(("a.txt", b"text"))), 400, "a.txt: not an image"),
        (client.post("/api/explain", files=upload(pug), data={"class": "hamster"}), 400, "unknown class 'hamster'"),
    ]
    for answer, status, words in cases:
        assert answer.status_code == status and words in answer.json()["error"], (answer.status_code, answer.text)


def test_explain_returns_the_grad_cam_overlay_of_the_top_label_or_the_asked_class(client, service):
    pug = (photo("pug").name, photo("pug").read_bytes())
    answer = client.post("/api/explain", files=upload(pug))
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-class"] == "pug" and float(answer.headers["x-probability"]) > 0.5
    overlay = Image.open(io.BytesIO(answer.content))
    assert overlay.size == (160, 160) and overlay.mode == "RGB"
    asked = client.post("/api/explain", files=upload(pug), data={"class": "Siamese"})
    assert asked.headers["x-class"] == "Siamese" and asked.content != answer.content
    assert all(p.grad is None for p in service.classifier.model.parameters())  # no weight gradients kept


def test_no_file_on_the_server_can_be_read_through_the_api(client):
    for path in ("/static/../web.py", "/static/%2e%2e/web.py", "/static/..%2fweb.py", "/static//etc/passwd",
                 "/static/%2fetc%2fpasswd", "/../pyproject.toml"):
        answer = client.get(path)
        assert answer.status_code == 404 and "import" not in answer.text, path
    # an upload's name is only a label: a real photo's path with other bytes is judged by the bytes
    real = str(photo("pug").resolve())
    entries = client.post("/api/predict", files=upload((real, b""), ("/etc/passwd", b"x"))).json()
    assert [e.get("error") for e in entries] == ["empty file (0 bytes)", "not an image (unknown or damaged format)"]


def test_twenty_requests_at_once_on_a_real_server_all_get_their_answer(service, tmp_path):
    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    breeds = ["pug", "Persian", "beagle", "Siamese"] * 5
    bad = {3: b"", 7: b"GIF89a broken", 11: bomb(tmp_path, 30_000, 30_000)}

    def ask(i: int) -> httpx.Response:
        """As the page does: a busy server's 503 says when to ask again."""
        data = bad.get(i, photo(breeds[i], i // 4).read_bytes())
        while True:
            answer = httpx.post(f"http://127.0.0.1:{port}/api/predict", files=upload((f"{i}.jpg", data)), timeout=120)
            if answer.status_code != 503:
                return answer
            busy.append(answer)
            time.sleep(int(answer.headers["retry-after"]))

    busy = []

    try:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(ask, range(20)))
        assert [a.status_code for a in answers] == [200] * 20
        entries = [a.json()[0] for a in answers]
        assert [e["path"] for e in entries] == [f"{i}.jpg" for i in range(20)]
        assert [i for i, e in enumerate(entries) if "error" in e] == sorted(bad)
        right = sum(e["predictions"][0]["label"] == breeds[i] for i, e in enumerate(entries) if "error" not in e)
        assert right >= 15, entries
        assert httpx.get(f"http://127.0.0.1:{port}/api/health").json()["status"] == "ok"
        assert all(b.json()["error"].startswith("busy: ") for b in busy)  # 20 at once: over the 8 in flight
    finally:
        server.should_exit = True
        thread.join(10)


def test_serve_says_what_is_wrong_in_one_line(run_dir, tmp_path, capsys):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = str(busy.getsockname()[1])
        assert main(["serve", "--checkpoint", str(run_dir), "--port", port]) == 2
        assert capsys.readouterr().err.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    finally:
        busy.close()
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint file" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(run_dir), "--host", "no-such-host.invalid"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot listen on no-such-host.invalid")


def test_the_load_benchmark_runs_a_server_and_reports_every_figure(run_dir, tmp_path):
    import subprocess
    import sys

    from .conftest import ROOT

    out = tmp_path / "serve.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_serve.py"), "--checkpoint",
                             str(run_dir), "--requests", "30", "--clients", "2", "--device", "cpu", "--json",
                             str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["timed_requests"] == 27 and figures["clients"] == 2 and figures["photo"] == "pug_12.jpg"
    assert figures["requests_per_second"] > 0 and 0 < figures["latency_ms"]["p50"] <= figures["latency_ms"]["p95"]
    assert set(figures["rss_mb"]) == {"after_3", "after_30"} and all(v > 100 for v in figures["rss_mb"].values())
    assert result.stdout.splitlines()[0].startswith("2 clients, 27 timed requests of pug_12.jpg: ")
    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_serve.py"), "--checkpoint",
                              str(run_dir), "--photo", str(tmp_path / "nothing.jpg")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: no such photo: {tmp_path / 'nothing.jpg'}"


def test_serve_without_the_web_extra_says_how_to_install_it(run_dir, monkeypatch, capsys):
    import sys

    monkeypatch.delitem(sys.modules, "petclassifier.web.app")
    monkeypatch.setitem(sys.modules, "starlette", None)  # as if not installed
    for name in [m for m in sys.modules if m.startswith("starlette.")]:
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["serve", "--checkpoint", str(run_dir)]) == 2
    assert capsys.readouterr().err.strip() == \
        'error: the web page needs the web extra (starlette is missing): pip install -e ".[web]"'


def test_the_server_s_connections_send_answers_at_once():
    """Nagle's algorithm off on each accepted connection: with it on, an answer's body waited ~40 ms for the client
    to acknowledge its headers (asyncio turns it off only on sockets made with protocol TCP)."""
    import asyncio
    import socket

    from petclassifier.web.app import listening_socket

    async def accepted_nodelay() -> int:
        seen = asyncio.get_running_loop().create_future()

        class Record(asyncio.Protocol):
            def connection_made(self, transport):
                seen.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        listener = listening_socket("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Record, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0


def test_serve_names_its_checkpoint_and_says_when_other_machines_can_reach_it(run_dir):
    from benchmarks.serve_load import started_server

    with started_server(str(run_dir), "--host", "0.0.0.0", "--device", "cpu") as (process, first):
        second = process.stdout.readline()
    assert first.startswith(f"serving {run_dir / 'best.pt'} (breed: 4 classes: Persian, Siamese, beagle, ...) at "
                            "http://localhost:"), first
    assert re.search(r" at http://localhost:\d+/\?token=[0-9a-f]{48}  \(Ctrl\+C stops\)$", first.rstrip()), first
    assert second.startswith("note: other machines can reach this page") and "with the token" in second


def test_requests_that_wait_together_share_forward_passes_and_keep_their_own_answers(service, client):
    """While the network is busy, three requests (1, 2 and 1 photos, top_k 1, 3 and 2) queue; they then go through
    in one pass of 4 photos, each answered as it would be alone."""
    alone = [client.post("/api/predict", files=[("file", (p.name, p.read_bytes())) for p in photos],
                         data={"top_k": str(k)}).json() for photos, k in REQUESTS]
    passes, outputs = [], service.classifier._square_outputs
    busy = threading.Event()
    service.worker.submit(busy.wait)  # the network's thread, busy until released

    def counted(squares):
        passes.append(len(squares))
        return outputs(squares)

    async def all_at_once():
        waiting = [asyncio.create_task(service.predict([(p.name, p.read_bytes()) for p in photos], k))
                   for photos, k in REQUESTS]
        while len(service.waiting) < len(REQUESTS):
            await asyncio.sleep(0.01)
        busy.set()
        return await asyncio.gather(*waiting)

    service.classifier._square_outputs = counted
    try:
        together = asyncio.run(all_at_once())
    finally:
        service.classifier._square_outputs = outputs
        busy.set()
    assert passes == [4]
    assert together == approx_nested(alone, abs=1e-5)
    assert [len(answer[0]["predictions"]) for answer in together] == [1, 3, 2]


REQUESTS = [([photo("pug")], 1), ([photo("beagle"), photo("Persian")], 3), ([photo("Siamese")], 2)]


def test_class_names_in_any_script_explain_with_200(run_dir, tmp_path):
    """Headers are latin-1: the class goes percent-encoded UTF-8 in X-Class (the page decodes it)."""
    from urllib.parse import unquote

    ckpt = load_checkpoint(run_dir / "best.pt")
    names = ["кот", "猫", "pug dog", "100%"]
    save_checkpoint({**ckpt, "class_names": names, "species_of": {}}, tmp_path / "best.pt")
    client = TestClient(create_app(PhotoService(tmp_path / "best.pt", device="cpu")), base_url=LOCAL)
    pug = (photo("pug").name, photo("pug").read_bytes())
    for name in names:
        answer = client.post("/api/explain", files=upload(pug), data={"class": name})
        assert answer.status_code == 200 and unquote(answer.headers["x-class"]) == name
    assert [p["label"] for p in client.post("/api/predict", files=upload(pug)).json()[0]["predictions"]]


def test_too_many_pixels_in_one_request_get_413_and_uploads_past_the_line_503(client, tmp_path, monkeypatch):
    from petclassifier.web import limits as web_limits

    width, height = Image.open(photo("pug")).size
    monkeypatch.setattr(web_limits, "MAX_PIXELS_PER_REQUEST", width * height * 3)  # three of these photos, not four
    pug = (photo("pug").name, photo("pug").read_bytes())
    assert client.post("/api/predict", files=upload(*[pug] * 3)).status_code == 200
    four = client.post("/api/predict", files=upload(*[pug] * 4))
    assert four.status_code == 413 and "pixels" in four.json()["error"]

    release, started = asyncio.Event(), []

    async def slow(scope, receive, send):  # an upload the network is still busy with
        started.append(1)
        await release.wait()
        await web_limits.JSONResponse({"ok": True})(scope, receive, send)

    async def request(limits):
        scope = {"type": "http", "method": "POST", "path": "/api/predict", "headers": [(b"content-length", b"10")]}
        messages = []

        async def receive():
            return {"type": "http.request", "body": b"0123456789", "more_body": False}

        async def send(message):
            messages.append(message)

        await limits(scope, receive, send)
        return messages[0]["status"], dict(messages[0]["headers"])

    async def four_at_once():
        limits = web_limits.RequestLimits(slow, max_bytes=100, max_in_flight=2, max_waiting=1)
        tasks = [asyncio.create_task(request(limits)) for _ in range(3)]  # two in flight, one waiting its turn
        while len(started) < 2 or limits.waiting < 1:
            await asyncio.sleep(0)
        fourth = await request(limits)  # the line is full: turned away before its body is read
        assert len(started) == 2  # the third has not started
        release.set()
        return fourth, [await t for t in tasks], len(started)

    (status, headers), others, served = asyncio.run(four_at_once())
    assert status == 503 and headers[b"retry-after"] == b"1" and [s for s, _ in others] == [200, 200, 200]
    assert served == 3  # the waiting one was served when a slot came free


def test_odd_form_values_get_an_answer_or_a_4xx_with_its_reason(client):
    pug = photo("pug").read_bytes()
    cases = [  # (files, fields, status, what the answer says)
        ([("file", ("", pug))], {}, 400, "no photo"),  # a file part without a name: a browser's empty chooser
        ([("file", ("a.jpg", b""))], {}, 200, "empty file"),
        ([], {"file": "hello"}, 400, "multipart"),
        ([("file", ("a.jpg", pug))], {"top_k": "99999999999999999999"}, 200, "pug"),
        ([("file", ("a.jpg", pug))], {"top_k": "-1"}, 400, "top_k"),
        ([("file", ("a.jpg", pug))], {"top_k": "٣"}, 400, "top_k"),
        ([("file", ("猫 кот.jpg", pug))], {}, 200, "猫 кот.jpg"),
    ]
    for files, fields, status, words in cases:
        answer = client.post("/api/predict", files=files or None, data=fields)
        assert answer.status_code == status and words in answer.text, (files, fields, answer.status_code, answer.text)
    empty_class = client.post("/api/explain", files=upload(("a.jpg", pug)), data={"class": ""})
    assert empty_class.status_code == 400 and "unknown class ''" in empty_class.json()["error"]
