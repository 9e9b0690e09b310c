"""predict over a folder of mixed files: one result or error per file, in order, and the right exit status."""

import json

import pytest
import torch

from petclassifier.checkpoint import check_class_names, load_checkpoint, save_checkpoint
from petclassifier.cli import main
from petclassifier.errors import UserError
from petclassifier.models import build_model
from petclassifier.predict import PetClassifier
from petclassifier.transforms import Preprocessing

from .photos import BAD, GOOD, copy_misnamed, write_all, write_junk


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "best.pt"
    save_checkpoint({"model_name": "smallcnn", "class_names": ["disc", "square"], "task": "breed",
                     "preprocessing": Preprocessing.for_model("smallcnn", 32).as_dict(),
                     "model_state": build_model("smallcnn", 2).state_dict()}, path)
    return path


@pytest.fixture
def predict(capsys):
    """Run `petclassifier predict` as the CLI does; returns (exit status, stdout)."""
    def run(checkpoint, *args):
        status = main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", *map(str, args)])
        return status, capsys.readouterr().out

    return run


def test_mixed_folder_gives_one_line_per_file_in_order(tmp_path, checkpoint, predict):
    folder = tmp_path / "photos"
    files = write_all(folder, GOOD) + write_all(folder, BAD) + copy_misnamed(folder)
    write_junk(folder)
    write_all(folder / ".thumbnails", {"dot.png": GOOD["dot.png"]})  # a hidden folder's files are not the user's photos
    expected = sorted(map(str, files))
    bad = {str(folder / name) for name in BAD}

    status, text = predict(checkpoint, "--top-k", "1", folder)
    assert status == 0
    lines = text.strip().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == expected
    assert {line.split(": ", 1)[0] for line in lines if ": error: " in line} == bad

    status, as_json = predict(checkpoint, "--json", folder)
    assert status == 0
    results = json.loads(as_json)
    assert [r["path"] for r in results] == expected
    assert {r["path"] for r in results if "error" in r} == bad
    assert all(set(r) == {"path", "error"} and r["error"] for r in results if r["path"] in bad)
    assert all(len(r["predictions"]) == 2 for r in results if r["path"] not in bad)


def test_exit_status_is_1_only_when_no_input_could_be_read(tmp_path, checkpoint, predict):
    bad = write_all(tmp_path / "bad", BAD)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")  # named explicitly, so it is tried and reported
    status, out = predict(checkpoint, "--json", *bad, notes)
    assert status == 1
    assert [r["path"] for r in json.loads(out)] == [*map(str, bad), str(notes)]
    good = write_all(tmp_path / "good", {"dot.png": GOOD["dot.png"]})
    assert predict(checkpoint, *bad, *good)[0] == 0


def test_python_api_reports_errors_per_path(tmp_path, checkpoint):
    paths = write_all(tmp_path, {"page.jpg": BAD["page.jpg"], "gray.png": GOOD["gray.png"]})
    first, second = PetClassifier.from_checkpoint(checkpoint, device="cpu").predict_paths(paths)
    assert first.error and not first.labels and second.error is None and len(second.labels) == 2


def test_checkpoint_trained_on_other_classes_is_a_clear_error(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    check_class_names(ckpt, ["disc", "square"], "this folder")
    with pytest.raises(UserError, match="other classes than this folder: 1 class.*never learned \\(triangle\\)"):
        check_class_names(ckpt, ["disc", "square", "triangle"], "this folder")
    with pytest.raises(UserError, match="another order"):
        check_class_names(ckpt, ["square", "disc"], "this folder")
