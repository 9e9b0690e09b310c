"""The doctor's findings from features: the same photo twice (file digests, difference hashes and features close
together) and photos likely filed under the wrong class (out-of-fold scores and confident learning)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..data.splits import stratified_folds

# Near duplicates: photos whose squares have nearly the same difference hash (a resized or re-encoded copy: at most 3
# bits apart on 150 copies of cats-vs-dogs train/ photos at 50% and 70% size and JPEG quality 70; distinct photos of
# that folder, 8 or more) and features not far apart (those copies: cosine 0.67 or more; two photos of the Oxford
# subset 5-6 bits apart, a dog and a cat, 0.29-0.34); or whose pooled features point the same way (a crop or an
# edit: distinct cats-vs-dogs photos' closest pair 0.896)
NEAR_BITS, HASHED_COSINE, NEAR_COSINE = 6, 0.6, 0.95
FOLDS = 5


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def exact_duplicates(paths: list[str]) -> list[list[int]]:
    """Groups (indices) of files with the same bytes."""
    groups: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        groups.setdefault(file_digest(path), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def difference_hashes(images, block: int = 256) -> torch.Tensor:
    """[N, 64] bits of each uint8 square [3, R, R]: the grey image shrunk to 8 x 9, each pixel brighter than its
    left neighbour or not; resizing and re-encoding leave it nearly as it was."""
    bits = []
    for start in range(0, len(images), block):
        grey = images[start : start + block].float().mean(1, keepdim=True)
        small = nn.functional.adaptive_avg_pool2d(grey, (8, 9))[:, 0]
        bits.append((small[:, :, 1:] > small[:, :, :-1]).flatten(1))
    return torch.cat(bits) if bits else torch.zeros(0, 64, dtype=torch.bool)


def near_duplicates(features: torch.Tensor, hashes: torch.Tensor, block: int = 2048) -> list[list[int]]:
    """Groups (indices) of photos that are near copies by their features [N, D] or difference hashes [N, 64], linked
    through any chain of such pairs; in blocks of rows, so 25,000 photos never make a 25,000 x 25,000 matrix."""
    unit = nn.functional.normalize(features.float(), dim=1)
    signs = hashes.float() * 2 - 1  # +-1: the dot product of two rows is 64 - 2 x the bits they differ in
    parent = list(range(len(unit)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(unit), block):
        rows = slice(start, start + block)
        cosine = unit[rows] @ unit.T
        near = (cosine >= NEAR_COSINE) | ((signs[rows] @ signs.T >= 64 - 2 * NEAR_BITS) & (cosine >= HASHED_COSINE))
        for i, j in near.triu(diagonal=start + 1).nonzero().tolist():  # each pair once
            parent[root(start + i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(unit)):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def out_of_fold(inputs: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int = 0, epochs: int = 200,
                together: list[list[int]] = ()) -> torch.Tensor:
    """[N, num_classes] probabilities of each photo from a linear head trained (full batch, AdamW) on the other
    folds' inputs [N, D]; the photos of each group of `together` (copies) fall in one fold."""
    probs = torch.zeros(len(labels), num_classes)
    k = max(2, min(FOLDS, int(torch.bincount(labels, minlength=num_classes).min())))
    fold_of = torch.zeros(len(labels), dtype=torch.long)
    for fold, members in enumerate(stratified_folds(labels, k, seed)):
        fold_of[members] = fold
    for group in together:  # a copy filed under another class would otherwise teach the head its original is wrong
        fold_of[group] = int(fold_of[group[0]])
    for fold in range(k):
        kept = fold_of != fold
        held = ~kept
        torch.manual_seed(seed)
        head = nn.Linear(inputs.shape[1], num_classes)
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.05)
        with torch.enable_grad():
            for _ in range(epochs):
                loss = nn.functional.cross_entropy(head(inputs[kept]), labels[kept])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            probs[held] = head(inputs[held]).softmax(1)
    return probs


def confident_learning(probs: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, int, float]]:
    """(photo, suggested class, score) of the photos whose given class is likely wrong, most likely first: another
    class's probability passes that class's threshold and beats the given class's. Score: 1 - the given class's
    probability."""
    n, c = probs.shape
    own = probs[torch.arange(n), labels]
    thresholds = torch.stack([own[labels == j].mean() if (labels == j).any() else torch.tensor(1.0)
                              for j in range(c)])
    confident = torch.where(probs >= thresholds, probs, torch.zeros(()))  # classes that pass their threshold
    suggested = confident.argmax(1)
    issue = (confident.max(1).values > 0) & (suggested != labels) & (probs[torch.arange(n), suggested] > own)
    found = [(i, int(suggested[i]), float(1 - own[i])) for i in issue.nonzero().flatten().tolist()]
    return sorted(found, key=lambda f: -f[2])
