"""predict over many photos: decoded in worker processes, streamed in input order, a few batches ahead at most."""

import io
import json
import multiprocessing
import os
import sys

import pytest
import torch

import petclassifier.data.images
from petclassifier.cli import main
from petclassifier.data.images import expand_paths
from petclassifier.inference.predict import PetClassifier
from petclassifier.runtime import inference_batch_size

from .conftest import SAMPLE, draw_photo
from .photos import BAD, GOOD, write_all
from .test_predict_inputs import write_checkpoint

needs_fork = pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                                reason="counting decodes in worker processes needs them forked from the test")


@pytest.fixture
def classifier(tmp_path):
    return PetClassifier.from_checkpoint(write_checkpoint(tmp_path / "best.pt", ["disc", "square"]), device="cpu")


def shapes(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        draw_photo(folder / f"{i:03d}.png", ("disc", "square")[i % 2], i)
    return sorted(folder.glob("*.png"))


def mixed(tmp_path):
    """Real photos, odd formats, a corrupt file, a missing path and a non-ASCII name, interleaved."""
    real = sorted((SAMPLE / "oxford-iiit-pet" / "images").glob("*.jpg"))[:4]
    odd = write_all(tmp_path / "odd", {k: GOOD[k] for k in ("gray.png", "cmyk.jpg", "exif.jpg", "thin.png")})
    corrupt, truncated = write_all(tmp_path / "bad", {k: BAD[k] for k in ("corrupt.jpg", "truncated.jpg")})
    named = tmp_path / "chat noir é.png"
    named.write_bytes(odd[0].read_bytes())
    return [real[0], corrupt, *odd[:2], tmp_path / "missing.jpg", real[1], named, *odd[2:], truncated, *real[2:]]


def counting_decodes(monkeypatch, counter):
    """Make every photo decode, in this process or a forked worker, append a line to the file `counter`."""
    load = petclassifier.data.images.load_image

    def counted(path, *args, **kwargs):
        with open(counter, "a") as f:
            f.write(f"{path}\n")
        return load(path, *args, **kwargs)

    monkeypatch.setattr(petclassifier.data.images, "load_image", counted)
    return lambda: len(counter.read_text().splitlines()) if counter.exists() else 0


def test_worker_processes_give_the_main_process_results_in_input_order(tmp_path, classifier):
    paths = mixed(tmp_path)
    streamed = list(classifier.iter_predictions(paths, top_k=2, workers=2, batch_size=3))
    assert streamed == classifier.predict_paths(paths, top_k=2, batch_size=3, workers=0)  # probabilities identical
    assert [r.path for r in streamed] == list(map(str, paths))
    errors = {r.path: r.error for r in streamed if r.error is not None}
    assert list(errors) == [str(paths[1]), str(paths[4]), str(paths[9])]
    assert errors[str(paths[4])] == "no such file or folder"
    assert all(len(r.labels) == 2 for r in streamed if r.error is None)


@needs_fork
@pytest.mark.parametrize("workers", [0, 2])
def test_the_first_result_comes_before_the_later_photos_are_decoded(tmp_path, classifier, monkeypatch, workers):
    paths = shapes(tmp_path / "photos", 40)
    decoded = counting_decodes(monkeypatch, tmp_path / "decoded.txt")
    stream = classifier.iter_predictions(paths, top_k=1, workers=workers, batch_size=4)
    first = next(stream)
    assert first.path == str(paths[0]) and first.error is None
    # in this process, the first batch only; with workers, the DataLoader's prefetch (2 batches a worker) and the
    # one batch it asks for when the first comes back: at most 5 of the 10 batches, however long the test waits
    assert decoded() == 4 if workers == 0 else 4 <= decoded() <= 5 * 4
    assert [r.path for r in stream] == list(map(str, paths[1:]))
    assert decoded() == len(paths)


class Recorder(io.StringIO):
    """A stdout that notes how many photos had been decoded when each piece of output was written."""

    def __init__(self, decoded):
        super().__init__()
        self.decoded, self.at = decoded, []

    def write(self, text):
        self.at.append(self.decoded())
        return super().write(text)


@pytest.mark.parametrize("style", ["--jsonl", "--json", "--text"])
def test_results_are_printed_as_they_come(tmp_path, monkeypatch, style):
    checkpoint = write_checkpoint(tmp_path / "best.pt", ["disc", "square"])
    photos = shapes(tmp_path / "photos", 40)  # five batches of 8 photos (a CPU's inference batch)
    missing, corrupt = tmp_path / "photos" / "gone.png", tmp_path / "photos" / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))
    paths = [photos[0], missing, corrupt, *photos[1:]]
    out = Recorder(counting_decodes(monkeypatch, tmp_path / "decoded.txt"))
    monkeypatch.setattr(sys, "stdout", out)
    flags = [] if style == "--text" else [style]
    assert main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0", *flags,
                 *map(str, paths)]) == 0
    batch = inference_batch_size(torch.device("cpu"))
    assert out.at[0] == batch and out.at[-1] == len(paths)  # the first batch's results before the second's decode
    text = out.getvalue()
    if style == "--jsonl":
        lines = text.splitlines()
        assert len(lines) == len(paths) and all(line.startswith("{") for line in lines)
        results = [json.loads(line) for line in lines]
    elif style == "--json":
        results = json.loads(text)
    else:
        results = [{"path": line.split(": ", 1)[0], **({"error": 1} if ": error: " in line else {})}
                   for line in text.splitlines()]
    assert [r["path"] for r in results] == list(map(str, paths))
    assert [r["path"] for r in results if "error" in r] == [str(missing), str(corrupt)]


def test_workers_below_0_is_a_one_line_error(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "best.pt", ["disc", "square"])
    photo = shapes(tmp_path / "photos", 1)[0]
    assert main(["predict", "--checkpoint", str(checkpoint), "--workers", "-1", str(photo)]) == 2
    assert capsys.readouterr().err == "error: --workers must be 0 or more\n"


def test_a_folder_is_listed_without_a_stat_per_file_or_a_look_inside_hidden_folders(tmp_path, monkeypatch):
    photos = shapes(tmp_path / "big" / "cats", 5) + shapes(tmp_path / "big" / "dogs" / "old", 5)
    write_all(tmp_path / "big" / ".thumbnails", {"dot.png": GOOD["dot.png"]})
    stat, scandir, stats, listed = os.stat, os.scandir, [], []
    monkeypatch.setattr(os, "stat", lambda path, *args, **kwargs: stats.append(path) or stat(path, *args, **kwargs))
    monkeypatch.setattr(os, "scandir", lambda path=".": listed.append(str(path)) or scandir(path))
    assert expand_paths([str(tmp_path / "big")]) == sorted(photos)
    assert stats == [tmp_path / "big"]  # whether the path given is a folder; then its listings alone
    assert not any(".thumbnails" in folder for folder in listed)


def test_a_reader_that_stops_early_ends_predict_quietly(tmp_path):
    import subprocess

    checkpoint = write_checkpoint(tmp_path / "best.pt", ["disc", "square"])
    shapes(tmp_path / "many", 300)
    proc = subprocess.Popen([sys.executable, "-m", "petclassifier", "predict", "--checkpoint", str(checkpoint),
                             "--workers", "0", str(tmp_path / "many")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith(str(tmp_path / "many" / "000.png"))
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(timeout=300) == 141
    # no BrokenPipeError traceback; only the line saying the checkpoint's ONNX copy was written (where it was)
    assert [line for line in proc.stderr.read().splitlines() if not line.startswith("prepared ")] == []
