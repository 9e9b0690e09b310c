"""What a dataset is once listed: photos with class indices, split into train, val and test; and the stratified
draws, a fraction of every class held out of training, or k folds of it (cross-fitting, the doctor), both dealt from
one shuffle of each class."""

from __future__ import annotations

from collections.abc import Sequence
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


def shuffled_classes(labels: Sequence[int], seed: int, names: Sequence[str] | None = None,
                     least: int = 1) -> list[list[int]]:
    """Every class's photo indices in a reproducible random order, classes by label: the one draw both splits deal.

    A class with fewer than `least` photos is an error that names it (by `names`, a class's folder say).
    """
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    generator, shuffled = torch.Generator().manual_seed(seed), []
    for y, members in sorted(by_class.items()):
        if len(members) < least:
            raise UserError(f"class {names[y] if names else y} has {len(members)} photo; a train/validation split "
                            "needs at least two per class: add photos, or give train/ and val/ sub-folders")
        shuffled.append([members[j] for j in torch.randperm(len(members), generator=generator).tolist()])
    return shuffled


def stratified_split(labels: Sequence[int], fraction: float, seed: int,
                     names: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Indices (train, held-out): `fraction` of every class, at least one photo, chosen reproducibly."""
    train, held = [], []
    for members in shuffled_classes(labels, seed, names, least=2):
        k = max(1, round(len(members) * fraction))
        held += members[:k]
        train += members[k:]
    return sorted(train), sorted(held)


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """`k` disjoint sets of indices, each with about 1/k of every class's photos, drawn reproducibly."""
    folds, dealt = [[] for _ in range(k)], 0
    for members in shuffled_classes(labels.tolist(), seed):
        for j, i in enumerate(members):
            folds[(dealt + j) % k].append(i)  # dealt on from where the last class stopped: folds stay even
        dealt += len(members)
    return [torch.tensor(sorted(fold), dtype=torch.long) for fold in folds]
