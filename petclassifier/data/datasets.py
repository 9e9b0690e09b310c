"""Datasets (bundled sample, Oxford-IIIT Pet, a user's folders), their splits and the photos of one split."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from torchvision.datasets import ImageFolder

from ..config import SAMPLE_DIR, TrainConfig
from ..errors import UserError
from ..runtime import progress
from .images import ImageError, check_image, is_image_file, is_photo_under, photos_under
from .oxford import oxford_data, oxford_splits
from .splits import PetData, ScoredSplit, Split, stratified_split

DATASETS = ("sample", "oxford-iiit-pet", "folder")
TASKS = ("breed", "species")
SPLIT_DIRS = ("train", "val", "test")
SKIPPED_FOLDERS = ("__MACOSX",)  # resource forks from zip files made on macOS, never a class


def check_config(cfg: TrainConfig) -> None:
    """UserError for a dataset or task that does not exist, or a task that does not fit the dataset."""
    if cfg.dataset not in DATASETS:
        raise UserError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    if cfg.dataset != "folder" and cfg.task not in TASKS:
        raise UserError(f"unknown task {cfg.task!r}; choose breed or species")
    if cfg.dataset == "folder":
        if cfg.data_dir is None:
            raise UserError("--dataset folder needs --data-dir DIR with one sub-folder of photos per class")
        if cfg.task not in (None, "folder"):
            raise UserError(f"--task {cfg.task} is for Oxford-IIIT Pet; a folder dataset's classes are its "
                            "sub-folders, so leave out --task")


def load_data(cfg: TrainConfig) -> PetData:
    """The splits named by the config: trainval/test for Oxford, train/val[/test] sub-folders or a split folder."""
    cfg = cfg.resolved()  # a task left out means breed, or "folder" for a folder dataset
    check_config(cfg)
    if cfg.dataset == "folder":
        data = folder_data(Path(cfg.data_dir), cfg.val_fraction, cfg.seed)
    else:
        root = Path(cfg.data_dir) if cfg.data_dir else SAMPLE_DIR
        data = oxford_data(root, cfg.task, cfg.download, cfg.val_fraction, cfg.seed)
    return screen_photos(data, cfg.strict_images)


def load_split(cfg: TrainConfig, split: str) -> ScoredSplit:
    """Only the photos of one split (train, val, test, or all of the dataset's photos), header-checked.

    Nothing else is listed, so a folder of new photos without a training split can be scored.
    """
    cfg = cfg.resolved()
    check_config(cfg)
    species_of = {}
    if cfg.dataset == "folder":
        class_names, photos = folder_split(Path(cfg.data_dir), split, cfg.val_fraction, cfg.seed)
    else:
        root = Path(cfg.data_dir) if cfg.data_dir else SAMPLE_DIR
        if split in ("train", "val"):  # the share of trainval that training held out, from the same seed
            data = oxford_data(root, cfg.task, False, cfg.val_fraction, cfg.seed)
            class_names, photos, species_of = data.class_names, getattr(data, split), data.species_of
        else:
            class_names, splits, species_of = oxford_splits(root, cfg.task, ("test",) if split == "test"
                                                            else ("trainval", "test"))
            photos = Split([p for part in splits.values() for p in part.paths],
                           [y for part in splits.values() for y in part.labels])
    bad = unreadable(photos.paths, cfg.strict_images)
    kept = photos.subset([i for i, p in enumerate(photos.paths) if p not in bad])
    return ScoredSplit(class_names, kept, species_of, list(bad.items()))


def unreadable(paths: list[str], strict: bool) -> dict[str, str]:
    """{path: reason} of the files whose header is not a readable image; with `strict`, the first is an error."""
    bad = {}
    for path in progress(paths, desc="checking photos", unit="file", leave=False, disable=len(paths) < 1000):
        try:
            check_image(path)
        except ImageError as e:
            if strict:
                raise UserError(f"unreadable photo {path}: {e}; remove it or leave out --strict-images to skip "
                                "such files") from None
            bad[path] = str(e)
    return bad


def screen_photos(data: PetData, strict: bool) -> PetData:
    """The dataset without the files whose header is not a readable image, listed in `skipped`.

    Run when the dataset is built, so a bad file is reported at the start rather than in the middle of training.
    With `strict`, the first bad file is an error instead.
    """
    splits = {"train": data.train, "val": data.val, "test": data.test}
    bad = unreadable([p for split in splits.values() if split for p in split.paths], strict)
    if not bad:
        return data
    kept = {name: split.subset([i for i, p in enumerate(split.paths) if p not in bad]) if split else None
            for name, split in splits.items()}
    if missing := set(range(len(data.class_names))) - set(kept["train"].labels):
        name = data.class_names[min(missing)]
        raise UserError(f"class {name} has no readable training photo; add photos of it or remove the class")
    return PetData(data.class_names, kept["train"], kept["val"], kept["test"], data.species_of,
                   data.skipped + list(bad.items()))


def folder_data(root: Path, val_fraction: float, seed: int) -> PetData:
    """A user's photos, one sub-folder per class; train/ val/ test/ sub-folders are used as splits when present."""
    if not root.is_dir():
        raise UserError(f"no folder {root}")
    split_dirs = [name for name in SPLIT_DIRS if (root / name).is_dir()]
    if split_dirs and "train" not in split_dirs:
        raise UserError(f"{root} has {'/'.join(split_dirs)}/ but no train/ sub-folder; add train/ with one folder "
                        "per class, or put the class folders directly in it")
    if split_dirs:
        class_names, train_split = image_folder(root / "train")
        splits = {name: image_folder(root / name, class_names)[1] for name in ("val", "test") if name in split_dirs}
        val = splits.get("val")
        if val is None:
            train_idx, val_idx = stratified_split(train_split.labels, val_fraction, seed,
                                                  [str(root / "train" / n) for n in class_names])
            train_split, val = train_split.subset(train_idx), train_split.subset(val_idx)
        return PetData(class_names, train_split, val, splits.get("test"))
    class_names, full = image_folder(root)
    train_idx, val_idx = stratified_split(full.labels, val_fraction, seed, [str(root / n) for n in class_names])
    return PetData(class_names, full.subset(train_idx), full.subset(val_idx), None)


def folder_split(root: Path, split: str, val_fraction: float, seed: int) -> tuple[list[str], Split]:
    """One split of a user's folder: its own sub-folder, the share of the photos training held out, or all photos."""
    if not root.is_dir():
        raise UserError(f"no folder {root}")
    split_dirs = [name for name in SPLIT_DIRS if (root / name).is_dir()]
    if not split_dirs:
        check_layout(root)
    if split == "all":
        parts = [image_folder(root / name, min_classes=1) for name in split_dirs] or [image_folder(root, min_classes=1)]
        class_names = sorted({name for names, _ in parts for name in names})
        labels = [class_names.index(names[y]) for names, part in parts for y in part.labels]
        return class_names, Split([p for _, part in parts for p in part.paths], labels)
    if split in split_dirs and (split != "train" or "val" in split_dirs):
        return image_folder(root / split, min_classes=1)
    if split == "test" or (split_dirs and "train" not in split_dirs):
        found = f"only {'/, '.join(split_dirs)}/" if split_dirs else "class folders but no split sub-folders"
        val = split != "val" and (not split_dirs or "train" in split_dirs or "val" in split_dirs)
        raise UserError(f"{root} has no {split} split ({found}); use {'--split val, or ' if val else ''}--split all "
                        "to score every photo in it")
    data = folder_data(root, val_fraction, seed)  # the same seed holds out the same photos as training did
    return data.class_names, getattr(data, split)


class _PhotoFolder(ImageFolder):
    """ImageFolder that ignores hidden folders (.git, .ipynb_checkpoints) and __MACOSX as classes."""

    def find_classes(self, directory):
        classes = class_folders(Path(directory))
        return classes, {name: i for i, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        # torchvision's own listing goes round a folder linked into itself some 40 times, each photo again
        valid = is_valid_file or is_image_file
        return [(path, index) for name, index in sorted(class_to_idx.items())
                for path in photos_under(os.path.join(directory, name)) if valid(path)]


def class_folders(root: Path) -> list[str]:
    """Names of the sub-folders that are classes: not hidden, not __MACOSX; sorted."""
    return sorted(e.name for e in os.scandir(root)
                  if e.is_dir() and not e.name.startswith(".") and e.name not in SKIPPED_FOLDERS)


def check_layout(root: Path) -> None:
    """UserError naming the layout expected when `root` has no class folders (photos directly in it, or nothing)."""
    if class_folders(root):
        return
    loose = sum(1 for e in os.scandir(root) if e.is_file() and is_image_file(e.name))
    if loose:
        found = f"{loose} photo{'s' if loose != 1 else ''} directly in {root} and no class folders"
    else:
        found = f"no class folders in {root}"
    raise UserError(f"found {found}: put the photos in one sub-folder per class, e.g. "
                    f"{root}/cat/*.jpg and {root}/dog/*.jpg")


def image_folder(root: Path, class_names: list[str] | None = None, min_classes: int = 2) -> tuple[list[str], Split]:
    """Class names and photos of an ImageFolder tree; `class_names` pins the label order to the training split's.

    Photos in nested folders of a class belong to it; files inside hidden folders are left out.
    """
    if not root.is_dir():
        raise UserError(f"no folder {root}")
    check_layout(root)
    folder = _PhotoFolder(str(root), is_valid_file=lambda path: is_photo_under(path, root), allow_empty=True)
    if class_names is None:
        class_names = folder.classes
        if len(class_names) < min_classes:
            raise UserError(f"{root} has {len(class_names)} class folder(s); a classifier needs at least two: "
                            "put each class's photos in its own sub-folder")
    elif missing := set(folder.classes) - set(class_names):
        raise UserError(f"{root} has classes that training does not: {', '.join(sorted(missing))}")
    counts = Counter(folder.classes[label] for _, label in folder.samples)
    if empty := [name for name in folder.classes if counts[name] == 0]:
        raise UserError(f"class folder {root / empty[0]} holds no photos; add some or remove the folder")
    index = {name: i for i, name in enumerate(class_names)}
    return class_names, Split([p for p, _ in folder.samples], [index[folder.classes[y]] for _, y in folder.samples])


