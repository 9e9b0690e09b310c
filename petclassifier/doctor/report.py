"""What is wrong with a dataset, found from the frozen network's features in seconds: the same photo twice (and a
val or test photo also in train/: leakage), photos that are likely filed under the wrong class, photos with no pet,
unreadable files, classes too small or out of balance. It moves and deletes nothing.

Likely wrong labels come from confident learning (Northcutt et al., 2021): every photo is scored by a linear head
trained on the other folds' features, each class gets a threshold (the mean probability its own photos get), and a
photo is an issue where another class passes its threshold with more probability than the given one. A few lines
of PyTorch on the features, rather than cleanlab and its dependencies.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.datasets import SPLIT_DIRS, image_folder, unreadable
from ..data.oxford import oxford_splits
from ..inference.predict import PET_KINDS
from ..models.kinds import KIND_NAMES, KindFeatures, kind_probabilities
from ..runtime import plural
from .findings import (
    confident_learning,
    difference_hashes,
    exact_duplicates,
    near_duplicates,
    out_of_fold,
)

FEW_PHOTOS = 10  # a class with fewer photos than this learns poorly (2 at least: one to learn, one to score)
IMBALANCE = 3.0  # largest class over smallest past which the report suggests --balance
SHOWN = 10  # photos the terminal lists under each finding; the JSON report holds them all


@dataclass
class Photos:
    """A dataset's photos: path, split and given class of each."""

    class_names: list[str]
    paths: list[str]
    splits: list[str]
    labels: list[int]
    cats_and_dogs: bool  # an Oxford dataset: "not a pet" means no cat or dog (for a folder: no animal)


def dataset_photos(data_dir: str | Path, dataset: str) -> Photos:
    """Every photo of an Oxford-IIIT Pet root (trainval, test) or a folder (train/ val/ test/, or class folders)."""
    root = Path(data_dir)
    if dataset == "oxford-iiit-pet":
        class_names, splits, _ = oxford_splits(root, "breed", ("trainval", "test"))
        named = [(name, split) for name, split in splits.items()]
    else:
        present = [name for name in SPLIT_DIRS if (root / name).is_dir()]
        class_names, first = image_folder(root / present[0] if present else root)
        named = [(present[0] if present else "all", first)]
        named += [(name, image_folder(root / name, class_names)[1]) for name in present[1:]]
    photos = Photos(class_names, [], [], [], dataset == "oxford-iiit-pet")
    for name, split in named:
        photos.paths += split.paths
        photos.splits += [name] * len(split.paths)
        photos.labels += split.labels
    return photos


def report(photos: Photos, bad: dict[str, str], features: torch.Tensor, hashes: torch.Tensor, imagenet: nn.Linear,
           seconds: dict) -> dict:
    """The findings as JSON: label_issues, duplicates, not_pets, classes, unreadable (and the time each part took).
    `features` [N_readable, D]: the pooled features of the readable photos, in order."""
    started = time.perf_counter()
    kept = [i for i, p in enumerate(photos.paths) if p not in bad]
    paths = [photos.paths[i] for i in kept]
    labels = torch.tensor([photos.labels[i] for i in kept])
    names = photos.class_names
    with torch.no_grad():
        inputs = KindFeatures(imagenet, 0.0).eval()(features.float())  # what the product's heads read
        kinds = kind_probabilities(imagenet(features.float()))
    duplicates = duplicate_groups(photos, paths, features, hashes)
    seconds["duplicates"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    index = {path: i for i, path in enumerate(paths)}
    copies = [[index[p] for p in d["paths"] if p in index] for d in duplicates]
    probs = out_of_fold(inputs, labels, len(names), together=[g for g in copies if len(g) > 1])
    issues = [{"path": paths[i], "split": photos.splits[kept[i]], "given": names[int(labels[i])],
               "suggested": names[j], "score": round(score, 4)} for i, j, score in confident_learning(probs, labels)]
    seconds["label_issues"] = round(time.perf_counter() - started, 1)
    pet_kinds, below = PET_KINDS["cats and dogs" if photos.cats_and_dogs else "animals"]
    pet = kinds[:, [KIND_NAMES.index(k) for k in pet_kinds]].sum(1)
    no_pet = pet < below
    counts = Counter(int(y) for y in labels)
    classes = [{"name": name, "photos": counts[i]} for i, name in enumerate(names)]
    # a class most of whose photos hold no pet is a class of such things (not_pets/, empty_room/): named once
    no_pet_classes = [{"name": names[c], "photos": counts[c], "no_pet": int(no_pet[labels == c].sum())}
                      for c in range(len(names)) if counts[c] and no_pet[labels == c].sum() > counts[c] / 2]
    skipped = {names.index(c["name"]) for c in no_pet_classes}
    not_pets = [{"path": paths[i], "kind": KIND_NAMES[int(kinds[i].argmax())], "pet_probability": round(float(p), 4)}
                for i, p in enumerate(pet.tolist()) if no_pet[i] and int(labels[i]) not in skipped]
    return {"photos": len(photos.paths), "label_issues": issues, "duplicates": duplicates, "not_pets": not_pets,
            "no_pet_classes": no_pet_classes, "classes": classes,
            "unreadable": [{"path": p, "reason": r} for p, r in bad.items()], "seconds": seconds}


def duplicate_groups(photos: Photos, paths: list[str], features: torch.Tensor, hashes: torch.Tensor) -> list[dict]:
    """The groups of the same photo (exact copies among all files, near ones among the readable `paths`), each with
    its splits and classes."""
    groups = [("exact", [photos.paths[i] for i in g]) for g in exact_duplicates(photos.paths)]
    exact_sets = [set(g) for _, g in groups]
    for g in near_duplicates(features, hashes):
        near = [paths[i] for i in g]
        if not any(set(near) <= s for s in exact_sets):
            groups.append(("near", near))
    split_of, class_of = dict(zip(photos.paths, photos.splits)), dict(zip(photos.paths, photos.labels))
    return [{"paths": g, "kind": kind, "splits": sorted({split_of[p] for p in g}),
             "classes": sorted({photos.class_names[class_of[p]] for p in g}),
             "leakage": len({split_of[p] for p in g}) > 1} for kind, g in groups]


def listed(lines: list[str], items: list[str]) -> None:
    """The first SHOWN items under a finding's line, indented, and how many more the JSON report holds."""
    lines += [f"  {item}" for item in items[:SHOWN]]
    if len(items) > SHOWN:
        lines.append(f"  ... and {len(items) - SHOWN} more (--json REPORT lists every one)")


def advice(found: dict) -> list[str]:
    """What the report says and what to do about each finding, each followed by the photos it names."""
    lines = [f"{plural(found['photos'], 'photo')} in {plural(len(found['classes']), 'class', 'classes')}"]
    if found["unreadable"]:
        lines.append(f"{len(found['unreadable'])} unreadable: remove them or open and save them again")
        listed(lines, [f"{f['path']}: {f['reason']}" for f in found["unreadable"]])
    duplicates = found["duplicates"]
    if duplicates:
        exact, leaks = sum(d["kind"] == "exact" for d in duplicates), sum(d["leakage"] for d in duplicates)
        lines.append(f"{plural(len(duplicates), 'group')} of duplicates ({exact} exact), {leaks} across splits: keep "
                     "one photo of each group; a val or test photo also in train/ makes the score too good "
                     "(leakage): move or delete the copy in train/")
        listed(lines, [" = ".join(d["paths"]) + f" ({d['kind']}" + (", across splits" if d["leakage"] else "") +
                       (f", under {' and '.join(d.get('classes', []))}" if len(d.get("classes", [])) > 1 else "") +
                       ")" for d in duplicates])
    if issues := found["label_issues"]:
        lines.append(f"{plural(len(issues), 'photo')} likely filed under the wrong class (most likely first): look "
                     "at each and move it to its class, or leave it where you were right")
        listed(lines, [f"{f['path']}: filed under {f['given']}, looks like {f['suggested']} ({f['score']:.0%} sure "
                       f"it is not {f['given']})" for f in issues])
    for c in found.get("no_pet_classes", []):
        lines.append(f"class {c['name']}: no pet in {c['no_pet']} of its {c['photos']} photos; fine if that is "
                     "the class")
    if not_pets := found["not_pets"]:
        them = "it" if len(not_pets) == 1 else "them"
        lines.append(f"{plural(len(not_pets), 'photo')} with no pet in {them}: remove {them}, or keep a class for "
                     f"{them}")
        listed(lines, [f"{f['path']}: sees {f['kind']} ({1 - f['pet_probability']:.0%} sure there is no pet)"
                       for f in not_pets])
    counts = [c["photos"] for c in found["classes"]]
    if small := [c["name"] for c in found["classes"] if c["photos"] < FEW_PHOTOS]:
        lines.append(f"{plural(len(small), 'class', 'classes')} with fewer than {FEW_PHOTOS} photos "
                     f"({', '.join(small[:5])}): add photos")
    if counts and min(counts) and max(counts) / min(counts) > IMBALANCE:
        lines.append(f"imbalance: {max(counts)} photos in the largest class, {min(counts)} in the smallest; add "
                     "photos to the small ones, or train with --balance")
    return lines if len(lines) > 1 else lines + ["nothing found"]


def diagnose(data_dir: str | Path, dataset: str, features_of, cats_and_dogs: bool | None = None) -> dict:
    """The report for a dataset; `features_of(paths)` -> (pooled features [N, D] and difference hashes [N, 64] of
    the photos it could decode, in order; the ImageNet classifier reading the features; {path: reason} of the
    others)."""
    started = time.perf_counter()
    photos = dataset_photos(data_dir, dataset)
    if cats_and_dogs is not None:
        photos.cats_and_dogs = cats_and_dogs
    bad = unreadable(photos.paths, strict=False)
    seconds = {"listing": round(time.perf_counter() - started, 1)}
    started = time.perf_counter()
    readable = [p for p in photos.paths if p not in bad]
    features, hashes, imagenet, undecodable = features_of(readable)
    seconds["features"] = round(time.perf_counter() - started, 1)
    bad.update(undecodable)  # a truncated file the header check let through: it has no row among the features
    return report(photos, bad, features, hashes, imagenet, seconds)


def examine(data_dir: str | Path, dataset: str | None = None, model: str = "efficientnet_lite2",
            cache_dir: str | None = None, backend: str = "auto", device: str = "auto", workers: int = 2) -> dict:
    """Python API of `petclassifier doctor`: the findings for a dataset (a folder, or the folder holding
    oxford-iiit-pet/: told apart when `dataset` is None), as the JSON report."""
    from ..config import default_cache_dir
    from ..errors import UserError
    from ..runtime import resolve_device

    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"no folder {root}")
    dataset = dataset or ("oxford-iiit-pet" if (root / "oxford-iiit-pet").is_dir() else "folder")
    where, cache = resolve_device(device), str(cache_dir or default_cache_dir())
    return diagnose(root, dataset, lambda paths: pooled_features(paths, model, cache, backend, where, workers))


def pooled_features(paths: list[str], model_name: str, cache_dir: str, backend: str, device: torch.device,
                    workers: int) -> tuple[torch.Tensor, torch.Tensor, nn.Linear, dict[str, str]]:
    """The pretrained body's pooled features of the centre crop of each photo [N, D] (decoded photos and features
    kept in the cache, as training keeps them), their squares' difference hashes, its ImageNet classifier, and
    {path: reason} of the photos it could not decode."""
    from ..config import LITE_SIZES
    from ..data.cache import decode_images
    from ..data.store import FeatureStore
    from ..data.transforms import Preprocessing
    from ..engine.backends import on_backend, resolve_backend
    from ..engine.frozen import Views, fast_frozen
    from ..models.registry import registry_model

    prep = Preprocessing.for_model(model_name, LITE_SIZES[model_name])
    images, bad = decode_images(paths, prep, cache_dir, workers)
    model = registry_model(model_name, 1000, pretrained=True).to(device).eval()  # 1000: the ImageNet head kept
    engine = on_backend(fast_frozen(model.body, model.head[0]), resolve_backend(backend, device), prep.crop, cache_dir)
    with FeatureStore(Path(cache_dir) / "features") as store:
        rows = Views(engine, images, prep, "all photos", 1, False, 0, device, store, images.path.stem)[0]
        features = rows[:].float().flatten(1).cpu()
    return features, difference_hashes(images), model.head[-1].cpu(), dict(bad)
