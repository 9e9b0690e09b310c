"""The real Oxford-IIIT Pet download-and-extract path of torchvision, against archives served on 127.0.0.1."""

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from torchvision.datasets import OxfordIIITPet

from petclassifier.config import TrainConfig
from petclassifier.data.datasets import load_data
from petclassifier.errors import UserError

from .conftest import SAMPLE

BREEDS = ("Abyssinian", "american_bulldog")


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def archives() -> dict[str, bytes]:
    """images.tar.gz and annotations.tar.gz of two breeds from the bundled sample, in the original layout."""
    def pick(split: str, per_breed: int) -> list[str]:
        lines = (SAMPLE / "oxford-iiit-pet" / "annotations" / f"{split}.txt").read_text().splitlines()
        return [line for breed in BREEDS for line in [x for x in lines if x.rsplit("_", 1)[0] == breed][:per_breed]]

    trainval, test = pick("trainval", 4), pick("test", 2)
    images = {f"images/{line.split()[0]}.jpg": (SAMPLE / "oxford-iiit-pet" / "images" / f"{line.split()[0]}.jpg")
              .read_bytes() for line in trainval + test}
    annotations = {"annotations/trainval.txt": "\n".join(trainval).encode() + b"\n",
                   "annotations/test.txt": "\n".join(test).encode() + b"\n"}
    return {"images.tar.gz": tar_gz(images), "annotations.tar.gz": tar_gz(annotations)}


class Server:
    """Serves `files` on 127.0.0.1; `cut` sends only half of each body, as a dropped connection does."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cut = files, False
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_GET(self):
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if server.cut else data)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.stopper = threading.Timer(120, self.httpd.shutdown)  # never outlives a hung test

    def resources(self, md5s: dict[str, str]) -> tuple:
        return tuple((self.url + name, md5s[name]) for name in ("images.tar.gz", "annotations.tar.gz"))


@pytest.fixture
def server():
    files = archives()
    s = Server(files)
    s.thread.start()
    s.stopper.start()
    yield s
    s.stopper.cancel()
    s.httpd.shutdown()
    s.httpd.server_close()


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.md5(data).hexdigest() for name, data in files.items()}


def download(root):
    return load_data(TrainConfig(dataset="oxford-iiit-pet", data_dir=str(root), download=True, val_fraction=0.25))


def test_download_extracts_a_complete_dataset(tmp_path, server, monkeypatch):
    monkeypatch.setattr(OxfordIIITPet, "_RESOURCES", server.resources(md5s(server.files)))
    data = download(tmp_path)
    assert data.class_names == ["abyssinian", "american_bulldog"]
    assert len(data.train.paths) + len(data.val.paths) == 8 and len(data.test.paths) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oxford-iiit-pet"]  # no staging folder left behind
    again = load_data(TrainConfig(dataset="oxford-iiit-pet", data_dir=str(tmp_path), val_fraction=0.25))
    assert again.train.paths == data.train.paths


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing_that_looks_complete(tmp_path, server, monkeypatch):
    wrong = {**md5s(server.files), "annotations.tar.gz": "0" * 32}
    monkeypatch.setattr(OxfordIIITPet, "_RESOURCES", server.resources(wrong))
    with pytest.raises(UserError, match="checksum") as caught:
        download(tmp_path)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "oxford-iiit-pet").exists()
    with pytest.raises(UserError, match="--download"):  # a later run without --download sees no dataset
        load_data(TrainConfig(dataset="oxford-iiit-pet", data_dir=str(tmp_path)))


def test_interrupted_download_fails_cleanly_and_the_next_run_completes(tmp_path, server, monkeypatch):
    monkeypatch.setattr(OxfordIIITPet, "_RESOURCES", server.resources(md5s(server.files)))
    server.cut = True
    with pytest.raises(UserError, match="could not download"):
        download(tmp_path)
    assert not (tmp_path / "oxford-iiit-pet").exists()
    server.cut = False
    assert len(download(tmp_path).test.paths) == 4


def test_offline_download_says_what_to_do_in_one_line(tmp_path, server, monkeypatch):
    resources = server.resources(md5s(server.files))
    server.httpd.shutdown()
    server.httpd.server_close()  # nothing listens on that port any more: connection refused, as offline
    monkeypatch.setattr(OxfordIIITPet, "_RESOURCES", resources)
    with pytest.raises(UserError, match="check the internet connection") as caught:
        download(tmp_path)
    assert "\n" not in str(caught.value) and "images.tar.gz" in str(caught.value)
    assert not (tmp_path / "oxford-iiit-pet").exists()
