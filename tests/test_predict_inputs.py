"""predict over a folder of mixed files: one result or error per file, in order, and the right exit status."""

import json
import os

import pytest
import torch
from PIL import Image

from petclassifier.cli import main
from petclassifier.data.transforms import Preprocessing
from petclassifier.errors import UserError
from petclassifier.inference.predict import PetClassifier
from petclassifier.models.checkpoint import check_class_names, load_checkpoint, save_checkpoint
from petclassifier.models.registry import build_model

from .photos import BAD, GOOD, copy_misnamed, exif_rotated, write_all, write_junk

SPECIES_OF = {"abyssinian": "cat", "bengal": "cat", "beagle": "dog", "pug": "dog"}  # as Oxford runs save it


def write_checkpoint(path, class_names, task="breed", species_of=None):
    """A smallcnn checkpoint with the fields train.py writes (untrained weights, seeded)."""
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model_name": "smallcnn", "class_names": class_names, "task": task,
                     "species_of": species_of or {}, "preprocessing": Preprocessing.for_model("smallcnn", 32).as_dict(),
                     "model_state": build_model("smallcnn", len(class_names)).state_dict()}, path)
    return path


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "best.pt", ["disc", "square"])


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


def test_a_missing_path_gets_an_error_entry_in_its_place(tmp_path, checkpoint, predict):
    first, second = write_all(tmp_path, {"gray.png": GOOD["gray.png"], "photo.bmp": GOOD["photo.bmp"]})
    missing = tmp_path / "missing.jpg"
    status, text = predict(checkpoint, "--top-k", "1", first, missing, second)
    assert status == 0
    lines = text.strip().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [str(first), str(missing), str(second)]
    assert lines[1] == f"{missing}: error: no such file or folder"
    status, as_json = predict(checkpoint, "--json", missing)
    assert status == 1 and json.loads(as_json) == [{"path": str(missing), "error": "no such file or folder"}]


def test_top_k_below_1_is_a_one_line_error(tmp_path, checkpoint, capsys):
    photo = write_all(tmp_path, {"gray.png": GOOD["gray.png"]})[0]
    for k in ("0", "-1"):
        assert main(["predict", "--checkpoint", str(checkpoint), "--top-k", k, str(photo)]) == 2
        out, err = capsys.readouterr()
        assert not out and err == "error: --top-k must be at least 1\n"


def test_a_species_model_answers_cat_or_dog_with_its_own_probabilities(tmp_path, predict):
    checkpoint = write_checkpoint(tmp_path / "best.pt", ["cat", "dog"], "species", SPECIES_OF)
    photos = write_all(tmp_path, {"gray.png": GOOD["gray.png"], "photo.bmp": GOOD["photo.bmp"]})
    status, as_json = predict(checkpoint, "--json", *photos)
    assert status == 0
    for result in json.loads(as_json):
        assert result["species"] == result["predictions"] and len(result["species"]) == 2
    clf = PetClassifier.from_checkpoint(checkpoint, device="cpu")
    assert clf.species(photos[0]) == clf.predict(photos[0])
    assert clf.species(photos) == clf.predict(photos)


def test_a_breed_model_sums_its_breeds_per_species_and_a_folder_model_has_none(tmp_path, checkpoint):
    photo = write_all(tmp_path, {"photo.bmp": GOOD["photo.bmp"]})[0]
    clf = PetClassifier.from_checkpoint(write_checkpoint(tmp_path / "breeds.pt", list(SPECIES_OF), "breed",
                                                         SPECIES_OF), device="cpu")
    breeds = dict(clf.predict(photo, top_k=4))
    cat = breeds["abyssinian"] + breeds["bengal"]
    species = dict(clf.species(Image.open(photo)))
    assert species == pytest.approx({"cat": cat, "dog": breeds["beagle"] + breeds["pug"]}, abs=1e-5)
    assert PetClassifier.from_checkpoint(checkpoint, device="cpu").species(photo) == []


def test_python_api_takes_pil_images_as_files_are_read_and_lists(tmp_path, checkpoint):
    clf = PetClassifier.from_checkpoint(checkpoint, device="cpu")
    rotated, rgba = tmp_path / "exif.jpg", tmp_path / "rgba.png"
    exif_rotated(rotated, 0)
    Image.open(rotated).convert("RGBA").save(rgba)
    assert clf.predict(Image.open(rgba)) == clf.predict(rgba)
    assert clf.predict(Image.open(rotated)) == clf.predict(rotated)  # turned upright from its EXIF, as a file is
    assert clf.predict([rotated, Image.open(rgba)], top_k=1) == [clf.predict(rotated, top_k=1),
                                                                  clf.predict(rgba, top_k=1)]
    assert clf.predict([]) == []


def test_a_run_folder_is_taken_as_its_checkpoint(tmp_path, checkpoint, predict):
    photo = write_all(tmp_path / "photos", {"gray.png": GOOD["gray.png"]})[0]
    status, text = predict(checkpoint.parent, photo)
    assert status == 0 and text == predict(checkpoint, photo)[1]
    assert main(["export", "--checkpoint", str(checkpoint.parent), "--out", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "model.pt").is_file()


@pytest.mark.parametrize("class_names, task, said", [
    (["cat", "dog"], "species", "(species: cat, dog)"),
    (list(SPECIES_OF), "breed", "(breed: 4 classes: abyssinian, bengal, beagle, ...)"),
])
def test_the_newest_checkpoint_is_named_with_its_task_and_classes(tmp_path, monkeypatch, capsys, class_names,
                                                                  task, said):
    old = write_checkpoint(tmp_path / "runs" / "old" / "best.pt", ["disc", "square"])
    os.utime(old, (0, 0))
    write_checkpoint(tmp_path / "runs" / "new" / "best.pt", class_names, task, SPECIES_OF)
    photo = write_all(tmp_path, {"gray.png": GOOD["gray.png"]})[0]
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--device", "cpu", str(photo)]) == 0
    newest = tmp_path / "runs" / "new" / "best.pt"
    assert capsys.readouterr().err == f"using the newest checkpoint, {newest.relative_to(tmp_path)} {said}\n"


def test_linked_folders_are_followed_and_a_link_into_itself_is_walked_once(tmp_path, checkpoint, predict):
    """Sub-folders that are symbolic links hold the user's photos (torchvision's ImageFolder follows them too); a
    link to a folder it sits in would list them forever."""
    from .conftest import linked_class_folders

    real, photos = linked_class_folders(tmp_path, per_class=2)
    (real / "disc" / "again").symlink_to(real / "disc", target_is_directory=True)  # disc/again/again/...
    (real / "square" / "up").symlink_to(photos, target_is_directory=True)  # square/up/square/up/...
    status, text = predict(checkpoint, "--top-k", "1", photos)
    assert status == 0, text
    listed = [line.split(": ", 1)[0] for line in text.splitlines()]
    assert listed == [str(photos / kind / f"{kind}_{i}.png") for kind in ("disc", "square") for i in range(2)]
