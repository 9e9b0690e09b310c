"""Classification metrics: confusion matrix, precision and recall, top-k accuracy, expected calibration error; and
the per-epoch rows a training run records."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def epoch_rows(metrics_path: str | Path, keys: tuple[str, ...] | None = None, missing_ok: bool = False) -> list[dict]:
    """The rows training appends to a run's metrics.jsonl, one per epoch (epoch, losses, val_accuracy, ...), only
    `keys` of each where given. A line cut short at the end (the file is being written) is left for the next read;
    with `missing_ok` a run that has written none yet has no rows."""
    try:
        lines = Path(metrics_path).read_text().splitlines()
    except FileNotFoundError:
        if not missing_ok:
            raise
        return []
    rows = []
    for line in filter(str.strip, lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows if keys is None else [{k: row.get(k) for k in keys} for row in rows]


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [num_classes, num_classes]: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_metrics(matrix: torch.Tensor) -> tuple[list[float | None], list[float | None]]:
    """(precision, recall) per class from a confusion matrix; None where a class was never predicted/present."""
    hits = matrix.diag().double()
    predicted, actual = matrix.sum(0).double(), matrix.sum(1).double()
    precision = [h / p if p else None for h, p in zip(hits.tolist(), predicted.tolist())]
    recall = [h / a if a else None for h, a in zip(hits.tolist(), actual.tolist())]
    return precision, recall


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of photos whose true class is among the k highest scores."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels.view(-1, 1)).any(1).float().mean().item()


def metrics_report(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """Every number of the evaluation as plain JSON values."""
    matrix = confusion_matrix(labels, logits.argmax(1), len(class_names))
    precision, recall = per_class_metrics(matrix)
    top5 = {"top5": topk_accuracy(logits, labels, 5)} if len(class_names) > 5 else {}  # else always 100%
    return {
        "photos": len(labels),
        "top1": topk_accuracy(logits, labels, 1),
        **top5,
        "mean_per_class_accuracy": mean_of_present(recall),
        "class_names": class_names,
        "per_class": {name: {"precision": p, "recall": r, "photos": int(n)}
                      for name, p, r, n in zip(class_names, precision, recall, matrix.sum(1).tolist())},
        "confusion_matrix": matrix.tolist(),
    }


def mean_of_present(recall: list[float | None]) -> float:
    """Mean recall of the classes that have photos in the split: a rare class counts as much as a common one."""
    present = [r for r in recall if r is not None]
    return sum(present) / max(1, len(present))


def mean_class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of every class present, averaged."""
    return mean_of_present(per_class_metrics(confusion_matrix(labels, logits.argmax(1), logits.shape[1]))[1])


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10):
    """(photos, mean top-1 confidence, accuracy) per equal-width confidence bin (0, 1/bins], ..., each [bins]."""
    confidence, predicted = probs.double().max(1)
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
    index = torch.bucketize(confidence, edges)  # right-closed bins: 0.1 falls in the first
    photos = torch.bincount(index, minlength=bins).double()
    sums = torch.zeros(2, bins, dtype=torch.float64)
    sums[0].index_add_(0, index, confidence)
    sums[1].index_add_(0, index, (predicted == labels).double())
    mean_confidence, accuracy = sums / photos.clamp(min=1)  # 0 in an empty bin
    return photos, mean_confidence, accuracy


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """ECE: the photo-weighted mean, over confidence bins, of |accuracy - mean top-1 confidence|."""
    return ece_of_bins(*calibration_bins(probs, labels, bins))


def ece_of_bins(photos: torch.Tensor, confidence: torch.Tensor, accuracy: torch.Tensor) -> float:
    return (photos / photos.sum() * (accuracy - confidence).abs()).sum().item()


def calibration_report(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, temperature: float,
                       bins: int = 10) -> dict:
    """ECE and reliability-diagram bins of the probabilities before and after the temperature, as JSON values."""
    report = {"temperature": temperature, "bins": bins}
    for when, probs in (("before", before), ("after", after)):
        photos, confidence, accuracy = calibration_bins(probs, labels, bins)
        report[f"ece_{when}"] = ece_of_bins(photos, confidence, accuracy)
        report[f"reliability_{when}"] = {"photos": photos.long().tolist(), "confidence": confidence.tolist(),
                                         "accuracy": accuracy.tolist()}
    return report


def chance_accuracy(labels: torch.Tensor, num_classes: int) -> float:
    """What a model that learned nothing scores: always answering the most common class (1 / classes if balanced)."""
    return torch.bincount(labels.cpu(), minlength=num_classes).max().item() / max(1, len(labels))


def luck_ceiling(labels: torch.Tensor, num_classes: int) -> float:
    """The accuracy a model that learned nothing reaches by luck on these photos: chance plus two standard errors."""
    chance = chance_accuracy(labels, num_classes)
    return chance + 2 * (chance * (1 - chance) / max(1, len(labels))) ** 0.5


def at_chance(accuracy: float, labels: torch.Tensor, num_classes: int) -> bool:
    """Whether `accuracy` on these photos is within luck's reach of chance, where they can tell at all."""
    ceiling = luck_ceiling(labels, num_classes)
    return ceiling < 1 and accuracy <= ceiling
