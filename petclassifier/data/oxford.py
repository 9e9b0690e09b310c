"""Oxford-IIIT Pet in torchvision's layout: its breeds or species, its trainval and test lists, and the download."""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import zlib
from pathlib import Path

from torchvision.datasets import OxfordIIITPet

from ..errors import UserError
from .splits import PetData, Split, stratified_split

OXFORD_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"

def oxford_data(root: Path, task: str, download: bool, val_fraction: float, seed: int) -> PetData:
    """Oxford-IIIT Pet through torchvision's loader; `root` holds (or receives) the oxford-iiit-pet folder."""
    if download:
        download_oxford(root)
    class_names, splits, species_of = oxford_splits(root, task, ("trainval", "test"))
    full = splits["trainval"]
    if not full.paths:
        raise UserError(f"{root / 'oxford-iiit-pet' / 'annotations' / 'trainval.txt'} lists no photos; training "
                        "needs them (evaluate --split test scores a test-only copy)")
    train_idx, val_idx = stratified_split(full.labels, val_fraction, seed, class_names)
    return PetData(class_names, full.subset(train_idx), full.subset(val_idx), splits["test"], species_of)


def oxford_splits(root: Path, task: str, names: tuple[str, ...]) -> tuple[list[str], dict[str, Split], dict[str, str]]:
    """Class names, the photos of each torchvision split named ("trainval", "test") and each breed's species.

    torchvision names only the breeds listed in a split while its labels count all 37, so the breeds are named
    from the image ids (Breed_Name_12.jpg) and numbered among those present.
    """
    if not (root / "oxford-iiit-pet" / "annotations").is_dir():
        raise UserError(f"no Oxford-IIIT Pet in {root / 'oxford-iiit-pet'}; give --data-dir DIR (the folder holding "
                        "oxford-iiit-pet/), or add --download to fetch it there (800 MB)")
    try:
        sets = {name: OxfordIIITPet(root, split=name) for name in names}
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f"{root / 'oxford-iiit-pet'} is incomplete or damaged ({e}); remove it and use --download "
                        "again") from None
    breed_of, species_of = {}, {}
    for pets in sets.values():  # torchvision keeps the labels and species privately
        for image, label, species in zip(pets._images, pets._labels, pets._bin_labels):
            breed_of[label] = image.stem.rsplit("_", 1)[0].lower()
            species_of[breed_of[label]] = ("cat", "dog")[species]
    if task == "species":
        class_names, labels = ["cat", "dog"], {n: list(pets._bin_labels) for n, pets in sets.items()}
    else:
        order = sorted(breed_of)
        class_names, index = [breed_of[y] for y in order], {y: i for i, y in enumerate(order)}
        labels = {n: [index[y] for y in pets._labels] for n, pets in sets.items()}
    return class_names, {n: Split([str(p) for p in pets._images], labels[n]) for n, pets in sets.items()}, species_of


def download_oxford(root: Path) -> None:
    """Fetch Oxford-IIIT Pet with torchvision into a staging folder that becomes `root/oxford-iiit-pet` only
    once both archives are downloaded, checksummed and extracted, so an interrupted run never looks complete."""
    final = root / "oxford-iiit-pet"
    if (final / "images").is_dir() and (final / "annotations").is_dir():
        return
    if final.exists():
        raise UserError(f"{final} exists but is incomplete; remove it and run again with --download")
    staging = root / "oxford-iiit-pet.download"
    for folder in ("images", "annotations"):  # extracted by an interrupted run; checksummed archives are kept
        shutil.rmtree(staging / "oxford-iiit-pet" / folder, ignore_errors=True)
    try:
        OxfordIIITPet(staging, split="trainval", download=True)
    except (OSError, RuntimeError, EOFError, http.client.HTTPException, tarfile.TarError, zlib.error) as e:
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "corrupted" in cause:  # torchvision's word for a checksum mismatch
            cause = "a downloaded archive failed its checksum (damaged or interrupted download)"
        raise UserError(f"could not download Oxford-IIIT Pet into {root}: {cause}; check the internet connection "
                        f"and run again, or extract images.tar.gz and annotations.tar.gz from {OXFORD_URL} "
                        f"into {final}") from None
    os.replace(staging / "oxford-iiit-pet", final)
    shutil.rmtree(staging, ignore_errors=True)
