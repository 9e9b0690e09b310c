import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

import petclassifier.data.images
from petclassifier.config import TrainConfig
from petclassifier.data.cache import decode_images, decode_split
from petclassifier.data.datasets import folder_data, load_data
from petclassifier.data.splits import Split, shuffled_classes, stratified_folds, stratified_split
from petclassifier.data.transforms import Preprocessing
from petclassifier.errors import UserError

from .conftest import make_folder, make_tiny_oxford


def test_stratified_split_keeps_every_class_and_is_reproducible():
    labels = [0] * 50 + [1] * 10 + [2] * 3
    train, held = stratified_split(labels, 0.2, seed=1)
    assert sorted(train + held) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in held) for c in range(3)] == [10, 2, 1]
    assert (train, held) == stratified_split(labels, 0.2, seed=1)
    assert held != stratified_split(labels, 0.2, seed=2)[1]


def test_the_validation_split_and_the_folds_deal_one_shuffle_of_each_class():
    labels = [0] * 10 + [1] * 5
    order = shuffled_classes(labels, seed=3)
    assert [sorted(members) for members in order] == [list(range(10)), list(range(10, 15))]
    assert stratified_split(labels, 0.2, seed=3)[1] == sorted(order[0][:2] + order[1][:1])
    first_fold = stratified_folds(torch.tensor(labels), 5, seed=3)[0]  # dealt in turn, class after class
    assert first_fold.tolist() == sorted([order[0][0], order[0][5], order[1][0]])


def test_bundled_sample_is_the_oxford_layout_with_all_breeds():
    data = load_data(TrainConfig())
    assert len(data.class_names) == 37
    assert {data.species_of[b] for b in data.class_names} == {"cat", "dog"}
    assert data.species_of["abyssinian"] == "cat" and data.species_of["pug"] == "dog"
    assert set(data.val.labels) == set(range(37))  # stratified: every breed held out
    assert data.test is not None and set(data.test.labels) == set(range(37))


def test_species_task_has_two_classes():
    data = load_data(TrainConfig(task="species"))
    assert data.class_names == ["cat", "dog"]
    assert set(data.train.labels) == {0, 1}


def test_folder_with_split_subfolders_uses_them(tmp_path):
    root = make_folder(tmp_path / "pets", per_class=4, splits=("train", "val", "test"))
    (root / "train" / ".DS_Store").write_text("junk")
    (root / "train" / "disc" / "notes.txt").write_text("not a photo")
    data = folder_data(root, 0.5, 0)
    assert data.class_names == ["disc", "square"]
    assert len(data.train.paths) == 8 and len(data.val.paths) == 8 and len(data.test.paths) == 8
    assert all("/val/" in p for p in data.val.paths)


def test_flat_folder_is_split_stratified(shapes_dir):
    data = folder_data(shapes_dir, 0.25, 0)
    assert sorted(data.val.labels) == [0, 0, 0, 1, 1, 1]
    assert not set(data.train.paths) & set(data.val.paths)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no folder"),
    (lambda p: (p / "only").mkdir(parents=True), "at least two"),
    (lambda p: [(p / c).mkdir(parents=True) for c in ("a", "b")], "holds no photos"),
])
def test_folder_mistakes_are_user_errors(tmp_path, setup, message):
    root = tmp_path / "mine"
    setup(root)
    with pytest.raises(UserError, match=message):
        folder_data(root, 0.2, 0)


@pytest.mark.parametrize("task", ["folder", None])
def test_a_folder_dataset_takes_the_folder_task(shapes_dir, task):
    data = load_data(TrainConfig(dataset="folder", data_dir=str(shapes_dir), task=task))
    assert data.class_names == ["disc", "square"]


def test_oxford_labels_are_named_from_the_image_ids_when_a_split_lacks_breeds(tmp_path):
    # torchvision names only the breeds of each split's own lines, while its labels count all 37
    root = make_tiny_oxford(tmp_path / "pets", per_split=(2, 1))  # Abyssinian, Bengal, beagle, pug
    trainval = root / "oxford-iiit-pet" / "annotations" / "trainval.txt"
    lines = trainval.read_text().splitlines()
    trainval.write_text("".join(f"{x}\n" for x in lines if x.rsplit("_", 1)[0] in ("Bengal", "beagle")))
    data = load_data(TrainConfig(dataset="oxford-iiit-pet", data_dir=str(root), task="breed", val_fraction=0.5))
    assert [data.class_names[y] for y in data.test.labels] == ["abyssinian", "bengal", "beagle", "pug"]
    assert sorted(data.class_names[y] for y in data.train.labels + data.val.labels) == ["beagle"] * 2 + ["bengal"] * 2
    assert data.species_of == {"abyssinian": "cat", "bengal": "cat", "beagle": "dog", "pug": "dog"}
    trainval.write_text("")  # a test-only copy
    with pytest.raises(UserError, match="trainval.txt lists no photos"):
        load_data(TrainConfig(dataset="oxford-iiit-pet", data_dir=str(root), task="breed"))


def test_missing_oxford_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="--download"):
        load_data(TrainConfig(dataset="oxford-iiit-pet", data_dir=str(tmp_path)))


def test_decoded_cache_is_reused_and_invalidated_when_a_photo_changes(shapes_dir, cache_dir, monkeypatch):
    paths = sorted(str(p) for p in Path(shapes_dir).rglob("*.png"))
    prep = Preprocessing.for_model("smallcnn", 32)
    first, bad = decode_images(paths, prep, cache_dir, workers=0)
    assert first.shape == (len(paths), 3, prep.resize, prep.resize) and first.dtype == torch.uint8 and not bad
    stores = list(Path(cache_dir, "images").glob("*.u8"))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the cache key reads no photo"))
    again, _ = decode_images(paths, prep, cache_dir, workers=0)
    monkeypatch.undo()
    assert torch.equal(first.load(), again.load()) and list(Path(cache_dir, "images").glob("*.u8")) == stores
    Path(paths[0]).write_bytes(Path(paths[-1]).read_bytes())  # a photo changed on disk (size or time)
    changed, _ = decode_images(paths, prep, cache_dir, workers=0)
    assert torch.equal(changed[0], first[-1])
    assert len(list(Path(cache_dir, "images").glob("*.u8"))) == 2


def test_a_copied_folder_with_a_bad_file_keeps_its_labels_aligned(shapes_dir, cache_dir, tmp_path):
    bad = shapes_dir / "disc" / "disc_00_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # sorts first: every later photo would shift by one
    prep = Preprocessing.for_model("smallcnn", 32)
    cfg = TrainConfig(dataset="folder", data_dir=str(shapes_dir), cache_dir=cache_dir, workers=0).resolved()
    split = Split(sorted(str(p) for p in shapes_dir.rglob("*.png")), [])
    split.labels = [0 if "/disc/" in p else 1 for p in split.paths]
    images, labels = decode_split(split, prep, cfg)
    copy = tmp_path / "copy"
    shutil.copytree(shapes_dir, copy)  # the same bytes at other paths
    moved = Split([p.replace(str(shapes_dir), str(copy)) for p in split.paths], split.labels)
    copied_images, copied_labels = decode_split(moved, prep, cfg)
    assert len(copied_images) == len(copied_labels) == len(split.paths) - 1
    assert torch.equal(copied_labels, labels) and torch.equal(copied_images.load(), images.load())


def test_an_interrupted_decode_leaves_nothing_and_the_next_run_completes(shapes_dir, cache_dir, monkeypatch):
    paths = sorted(str(p) for p in Path(shapes_dir).rglob("*.png"))
    prep = Preprocessing.for_model("smallcnn", 32)
    calls = []

    def interrupt_at_the_fifth_photo(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return square(*args)

    square = petclassifier.data.images.square_uint8
    monkeypatch.setattr(petclassifier.data.images, "square_uint8", interrupt_at_the_fifth_photo)
    with pytest.raises(KeyboardInterrupt):
        decode_images(paths, prep, cache_dir, workers=0)
    monkeypatch.undo()
    assert [p.name for p in Path(cache_dir, "images").iterdir()] == []
    abandoned = Path(cache_dir, "images", "0123.u8.tmp999999999")  # a killed process's file (no such pid)
    abandoned.write_bytes(b"half")
    images, _ = decode_images(paths, prep, cache_dir, workers=0)
    assert len(images) == len(paths) and not abandoned.exists()


def test_cache_command_shows_the_size_and_clears_it(shapes_dir, cache_dir, capsys, monkeypatch):
    from petclassifier.cli import main
    from petclassifier.data import store

    paths = sorted(str(p) for p in Path(shapes_dir).rglob("*.png"))
    decode_images(paths, Preprocessing.for_model("smallcnn", 32), cache_dir, workers=0)
    monkeypatch.setattr(store, "IN_USE", set())  # as the command finds it: in a process of its own
    size = sum(f.stat().st_size for f in Path(cache_dir).rglob("*") if f.is_file())
    capsys.readouterr()
    assert main(["cache", "--cache-dir", cache_dir]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{cache_dir}: {size / 1e6:,.1f} MB (limit 20 GB)"
    assert main(["cache", "--cache-dir", cache_dir, "--limit-gb", f"{size / 2e9}"]) == 0  # under what it holds
    assert capsys.readouterr().out.splitlines()[0] == f"{cache_dir}: 0.0 MB (limit {size / 2e9:g} GB)"
    assert list(Path(cache_dir, "images").iterdir()) == []  # the entry went: the next run decodes again
    assert main(["cache", "--cache-dir", cache_dir, "--limit-gb", "0"]) == 2
    assert "--limit-gb 0: give a size above 0" in capsys.readouterr().err
    assert main(["cache", "--cache-dir", cache_dir, "--clear"]) == 0
    assert not Path(cache_dir).exists() and "removed" in capsys.readouterr().out


def test_the_per_class_count_leaves_out_photos_only_a_full_decode_finds_broken(shapes_dir, cache_dir, tmp_path,
                                                                                capsys):
    """A truncated JPEG passes the header check that builds the dataset; the decode finds it. The counts a run
    prints at its start are of the photos it learns from."""
    from petclassifier import train
    from petclassifier.data.images import check_image

    from .photos import truncated_jpeg
    from .test_train import TINY

    broken = shapes_dir / "disc" / "disc_cut.jpg"
    truncated_jpeg(broken, 0)
    check_image(broken)  # the premise: its header is fine
    cfg = TrainConfig(**{**TINY, "epochs": 1}, data_dir=str(shapes_dir), cache_dir=cache_dir)
    data = load_data(cfg)
    readable = Counter(y for p, y in zip(data.train.paths, data.train.labels) if p != str(broken))
    capsys.readouterr()
    train(**{**TINY, "epochs": 1}, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(tmp_path / "run"))
    said = capsys.readouterr().out
    assert f"skipped unreadable photo {broken}" in said  # found by the decode, after the dataset was built
    assert f"train photos per class: disc {readable[0]}, square {readable[1]}" in said.splitlines(), said
