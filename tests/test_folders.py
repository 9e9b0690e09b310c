"""A user's class folders: hidden and nested folders, split sub-folders, and mistakes that get one clear line."""

import pytest

from petclassifier.cli import main
from petclassifier.config import TrainConfig
from petclassifier.data.datasets import folder_data, load_data
from petclassifier.errors import UserError

from .conftest import draw_photo, linked_class_folders, make_folder


def test_hidden_folders_are_ignored_and_nested_folders_belong_to_their_class(tmp_path):
    root = make_folder(tmp_path / "pets", per_class=4)
    for hidden in (".git", ".ipynb_checkpoints", "__MACOSX"):
        (root / hidden).mkdir()
        draw_photo(root / hidden / "x.png", "disc", 0)
    (root / "disc" / ".thumbnails").mkdir()
    draw_photo(root / "disc" / ".thumbnails" / "t.png", "disc", 1)
    (root / "square" / "2019" / "summer").mkdir(parents=True)
    draw_photo(root / "square" / "2019" / "summer" / "beach.png", "square", 2)
    data = folder_data(root, 0.25, 0)
    assert data.class_names == ["disc", "square"]
    paths = data.train.paths + data.val.paths
    assert len(paths) == 9 and not any("/." in p or "__MACOSX" in p for p in paths)
    beach = paths.index(str(root / "square" / "2019" / "summer" / "beach.png"))
    assert (data.train.labels + data.val.labels)[beach] == 1


@pytest.mark.parametrize("setup, message", [
    (lambda r: make_folder(r, per_class=3, splits=("val",)), "no train/ sub-folder"),
    (lambda r: (make_folder(r, per_class=3), (r / "square" / "square_1.png").unlink(),
                (r / "square" / "square_2.png").unlink()), r"class \S*square has 1 photo.*add photos"),
    (lambda r: (make_folder(r, per_class=3), (r / "empty").mkdir()), r"class folder \S*empty holds no photos"),
    (lambda r: make_folder(r, per_class=3, splits=("train",)) and make_folder(r / "val" / "x", per_class=1),
     "classes that training does not"),
])
def test_folder_mistakes_name_the_folder_and_the_fix(tmp_path, setup, message):
    root = tmp_path / "pets"
    setup(root)
    with pytest.raises(UserError, match=message) as caught:
        folder_data(root, 0.25, 0)
    assert "\n" not in str(caught.value)


def test_a_class_whose_photos_are_all_unreadable_is_an_error(tmp_path):
    root = make_folder(tmp_path / "pets", per_class=3)
    (root / "broken").mkdir()
    for i in range(3):
        (root / "broken" / f"{i}.jpg").write_text("<html>")
    with pytest.raises(UserError, match="class broken has no readable training photo"):
        load_data(TrainConfig(dataset="folder", data_dir=str(root)))


@pytest.mark.parametrize("args, message", [
    (["--task", "species"], "--task species is for Oxford-IIIT Pet"),
    (["--model", "no_such_net"], "unknown model"),
    (["--data-dir", "MISSING"], "no folder"),
])
def test_cli_mistakes_exit_2_with_one_line(tmp_path, capsys, args, message):
    root = make_folder(tmp_path / "pets", per_class=3)
    args = [str(tmp_path / "missing") if a == "MISSING" else a for a in args]
    argv = ["train", "--dataset", "folder", "--data-dir", str(root), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "run"), "--epochs", "1", "--model", "smallcnn", "--workers", "0", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(UserError):
        main([*argv, "--debug"])


@pytest.mark.parametrize("photos", [3, 0])
def test_a_flat_or_empty_folder_says_the_layout_expected(tmp_path, capsys, photos):
    root = tmp_path / "mine"
    root.mkdir()
    for i in range(photos):
        draw_photo(root / f"pet_{i}.jpg", "disc", i)
    argv = ["train", "--dataset", "folder", "--data-dir", str(root), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "run"), "--model", "smallcnn", "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "one sub-folder per class" in err and f"{root}/cat/*.jpg" in err and len(err.strip().splitlines()) == 1
    assert (f"3 photos directly in {root}" in err) == bool(photos)


def test_class_folders_that_are_links_train_and_a_link_into_itself_is_walked_once(tmp_path):
    real, pets = linked_class_folders(tmp_path, per_class=3)
    (real / "square" / "again").symlink_to(real / "square", target_is_directory=True)  # square/again/again/...
    data = folder_data(pets, 0.25, 0)
    paths = data.train.paths + data.val.paths
    assert data.class_names == ["disc", "square"] and len(paths) == len(set(paths)) == 6, paths
    assert sorted(paths) == [str(pets / kind / f"{kind}_{i}.png") for kind in ("disc", "square") for i in range(3)]
    argv = ["train", "--dataset", "folder", "--data-dir", str(pets), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "run"), "--epochs", "1", "--model", "smallcnn", "--image-size", "32",
            "--batch-size", "4", "--workers", "0"]
    assert main(argv) == 0 and (tmp_path / "run" / "best.pt").is_file()
