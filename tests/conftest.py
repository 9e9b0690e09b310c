"""Shared fixtures: tiny generated photo folders, and the real photos when they are present."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data"  # the bundled Oxford-IIIT Pet sample (always present)
SHARED = ROOT.parent / "shared" / "data"  # the larger real-photo sets beside the checkout (CI has them)
LOCAL = "http://127.0.0.1:8000"  # where test clients send requests: a name the server answers to

needs_shared = pytest.mark.skipif(
    not (SHARED / "oxford-iiit-pet").is_dir(), reason=f"real-photo sets not found at {SHARED} (only beside a CI clone)"
)


@pytest.fixture(autouse=True, scope="session")
def frozen_pass_on_torch(tmp_path_factory):
    """In-process runs (module fixtures' too) compute frozen passes, and predict, with PyTorch, as their expected
    figures were; tests/test_backends.py and test_onnx_copy.py try the others (each export would add seconds to every
    test that trains or predicts). Nothing is cached in the user's own cache folder, by subprocesses neither."""
    from petclassifier.engine import choice

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(choice, "AUTO_ON_CPU", "torch")
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


def draw_photo(path: Path, kind: str, seed: int, size: int = 48) -> None:
    """A small synthetic photo: a red disc or a blue square on a noisy background, easy to tell apart."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randint(90, 160) for _ in range(3)))
    d = ImageDraw.Draw(img)
    x, y, r = rng.randint(12, size - 12), rng.randint(12, size - 12), rng.randint(7, 11)
    if kind == "disc":
        d.ellipse([x - r, y - r, x + r, y + r], fill=(220, 30, 30))
    else:
        d.rectangle([x - r, y - r, x + r, y + r], fill=(30, 30, 220))
    img.save(path)


def make_folder(root: Path, per_class: int = 12, splits: tuple[str, ...] = ()) -> Path:
    """An ImageFolder tree with classes disc/ and square/ (inside train/, val/ ... when `splits` are given)."""
    seed = 0
    for split in splits or ("",):
        for kind in ("disc", "square"):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                draw_photo(folder / f"{kind}_{i}.png", kind, seed)
                seed += 1
    return root


def linked_class_folders(root: Path, per_class: int) -> tuple[Path, Path]:
    """(real, linked): a shapes folder, and a folder whose class sub-folders are symbolic links to its classes."""
    real, linked = make_folder(root / "real", per_class=per_class), root / "linked"
    linked.mkdir()
    for kind in ("disc", "square"):
        (linked / kind).symlink_to(real / kind, target_is_directory=True)
    return real, linked


def make_tiny_oxford(root: Path, breeds=("Abyssinian", "Bengal", "beagle", "pug"), per_split=(5, 2),
                     side: int = 96) -> Path:
    """An Oxford-IIIT Pet copy (torchvision's layout) of a few bundled breeds, two cat and two dog, photos shrunk."""
    source = SAMPLE / "oxford-iiit-pet"
    (root / "oxford-iiit-pet" / "images").mkdir(parents=True)
    (root / "oxford-iiit-pet" / "annotations").mkdir()
    for split, count in zip(("trainval", "test"), per_split):
        lines = (source / "annotations" / f"{split}.txt").read_text().splitlines()
        of_breed = {breed: [x for x in lines if x.split()[0].rsplit("_", 1)[0] == breed] for breed in breeds}
        chosen = [line for breed in breeds for line in of_breed[breed][:count]]
        (root / "oxford-iiit-pet" / "annotations" / f"{split}.txt").write_text("\n".join(chosen) + "\n")
        for line in chosen:
            image_id = line.split()[0]
            img = Image.open(source / "images" / f"{image_id}.jpg").convert("RGB")
            img.thumbnail((side * 2, side * 2))
            img.save(root / "oxford-iiit-pet" / "images" / f"{image_id}.jpg", quality=90)
    return root


@pytest.fixture
def shapes_dir(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "shapes")


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture
def fake_worker(monkeypatch):
    """Teaching workers that run each step's argv as a command line (tests/fake_worker.py), not `petclassifier ARGV`:
    for tests of the jobs, not of the training."""
    from petclassifier.web.workers import Zygote

    monkeypatch.setattr(Zygote, "command", [sys.executable, str(Path(__file__).with_name("fake_worker.py"))])
