"""Training on a folder of every kind of file: bad photos are listed once and skipped, good ones all used."""

import json

import pytest

from petclassifier import train
from petclassifier.errors import UserError

from .conftest import make_folder
from .photos import BAD, GOOD, copy_misnamed, write_all, write_junk

TINY = dict(dataset="folder", model="smallcnn", image_size=32, epochs=1, batch_size=16, lr=3e-3, workers=0)


def mixed_folder(root):
    """Two classes of drawn photos, plus every good and bad kind of file, the real misnamed photos and junk."""
    make_folder(root, per_class=4)
    good = [p for i, kind in enumerate(("disc", "square")) for p in write_all(root / kind / "kinds", GOOD, seed=i)]
    good += copy_misnamed(root / "disc")
    bad = write_all(root / "disc" / "broken", BAD) + write_all(root / "square", {"page.jpg": BAD["page.jpg"]})
    for folder in (root, root / "disc", root / "square" / "kinds"):
        write_junk(folder)
    return 8 + len(good), bad


def test_training_skips_each_bad_file_once_and_uses_every_good_one(tmp_path, capsys):
    n_good, bad = mixed_folder(tmp_path / "pets")
    summary = train(**TINY, data_dir=str(tmp_path / "pets"), cache_dir=str(tmp_path / "cache"),
                    out=str(tmp_path / "run"))
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: skipped unreadable photo")]
    assert sorted(w.split()[4].rstrip(":") for w in warnings) == sorted(map(str, bad))
    assert f"{len(bad)} unreadable photo(s) were skipped" in out
    assert sorted(s["path"] for s in summary["skipped"]) == sorted(map(str, bad))
    assert summary["photos"]["train"] + summary["photos"]["val"] == n_good
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped"] == summary["skipped"]
    assert not any(junk in out for junk in (".DS_Store", "Thumbs.db", "notes.txt"))


def test_strict_images_stops_at_a_bad_file(tmp_path):
    mixed_folder(tmp_path / "pets")
    with pytest.raises(UserError, match="unreadable photo .*(broken|page)"):
        train(**TINY, data_dir=str(tmp_path / "pets"), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"),
              strict_images=True)


def test_strict_images_also_catches_what_only_a_full_decode_finds(tmp_path):
    root = make_folder(tmp_path / "pets", per_class=4)
    write_all(root / "disc", {"truncated.jpg": BAD["truncated.jpg"]})
    with pytest.raises(UserError, match="truncated.jpg"):
        train(**TINY, data_dir=str(root), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"),
              strict_images=True)
