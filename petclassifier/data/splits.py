"""What a dataset is once listed: photos with class indices, split into train, val and test; and the stratified
draws, a fraction of every class held out of training, or k folds of it (cross-fitting, the doctor)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ..errors import UserError


@dataclass
class Split:
    """Photos and their class indices."""

    paths: list[str]
    labels: list[int]

    def subset(self, indices: list[int]) -> Split:
        return Split([self.paths[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class PetData:
    """Everything a run needs to know about its photos."""

    class_names: list[str]
    train: Split
    val: Split
    test: Split | None  # only for the final report, never for choosing epochs
    species_of: dict[str, str] = field(default_factory=dict)  # breed -> "cat" | "dog" (Oxford breeds only)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of files that are not photos


@dataclass
class ScoredSplit:
    """The photos of one split to score a model on, with the names of the classes they show."""

    class_names: list[str]
    photos: Split
    species_of: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def stratified_split(labels: list[int], fraction: float, seed: int,
                     names: list[str] | None = None) -> tuple[list[int], list[int]]:
    """Indices (train, held-out): `fraction` of every class, at least one photo, chosen reproducibly.

    `names` (a class's folder, say) name the classes in the error for a class with too few photos.
    """
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    rng = random.Random(seed)
    train, held = [], []
    for y, idx in sorted(by_class.items()):
        if len(idx) < 2:
            raise UserError(f"class {names[y] if names else y} has {len(idx)} photo; a train/validation split needs "
                            "at least two per class: add photos, or give train/ and val/ sub-folders")
        rng.shuffle(idx)
        k = max(1, round(len(idx) * fraction))
        held += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(held)


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """`k` disjoint sets of indices, each with about 1/k of every class's photos, drawn reproducibly."""
    generator, folds, dealt = torch.Generator().manual_seed(seed), [[] for _ in range(k)], 0
    for y in labels.cpu().unique():
        members = (labels.cpu() == y).nonzero().flatten()
        for j, i in enumerate(members[torch.randperm(len(members), generator=generator)].tolist()):
            folds[(dealt + j) % k].append(i)  # dealt on from where the last class stopped: folds stay even
        dealt += len(members)
    return [torch.tensor(sorted(fold), dtype=torch.long) for fold in folds]
