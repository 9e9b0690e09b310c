"""The PyTorch transfer-learning tutorial's pipeline: the yardstick `benchmark` measures this package against.

As the tutorial (pytorch.org/tutorials/beginner/transfer_learning_tutorial.html) writes it: a Dataset that opens each
JPEG with PIL and applies torchvision transforms in DataLoader workers, batches of 4, SGD (lr 0.001, momentum 0.9)
with the rate divided by 10 every 7 epochs, and the weights of the best validation epoch kept. It fine-tunes every
layer, or, as its "fixed feature extractor", only the last one (the body frozen, but still run on every batch).
So that the benchmark compares pipelines, not networks, it trains this package's network (same weights, same head),
channels_last, under the same autocast, with the same loop (`train.train_one_epoch`).

    python scripts/benchmarks/tutorial.py --dataset oxford-iiit-pet --data-dir ../shared/data [--epochs 25] [--frozen]

prints one JSON line per epoch ({"epoch", "val_accuracy", "time"}) and a last one with "test_accuracy".
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from petclassifier.cli.train import add_train_arguments, config_from_args
from petclassifier.config import TrainConfig
from petclassifier.data.datasets import load_data
from petclassifier.data.splits import Split
from petclassifier.data.transforms import Preprocessing
from petclassifier.engine.loop import evaluate, train_one_epoch
from petclassifier.errors import UserError
from petclassifier.models.registry import build_model
from petclassifier.runtime import resolve_device

BATCH_SIZE = 4  # the tutorial's
LR, MOMENTUM, DECAY_EVERY, DECAY = 0.001, 0.9, 7, 0.1  # SGD, and StepLR over epochs


class PathDataset(Dataset):
    """The tutorial's dataset: open, convert and transform one photo per item."""

    def __init__(self, split: Split, transform):
        self.paths, self.labels, self.transform = split.paths, split.labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), self.labels[i]


def tutorial_transforms(prep: Preprocessing) -> tuple[T.Compose, T.Compose]:
    """(train, evaluation) transforms as the tutorial composes them, at this model's sizes and normalisation."""
    normalize = T.Normalize(prep.mean, prep.std)
    train = T.Compose([T.RandomResizedCrop(prep.crop), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    evaluation = T.Compose([T.Resize(prep.resize), T.CenterCrop(prep.crop), T.ToTensor(), normalize])
    return train, evaluation


def photo_loader(split: Split, transform, workers: int, shuffle: bool = False, batch_size: int = BATCH_SIZE):
    return DataLoader(PathDataset(split, transform), batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      drop_last=shuffle, persistent_workers=workers > 0)


def train_tutorial(cfg: TrainConfig, epochs: int, frozen: bool, report=print) -> float:
    """Train as the tutorial does; `report` gets a JSON line per epoch and one with the test accuracy."""
    cfg = cfg.resolved()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    train_tf, eval_tf = tutorial_transforms(Preprocessing.for_model(cfg.model, cfg.image_size))
    model = build_model(cfg.model, len(data.class_names), cfg.pretrained)
    if frozen:  # the fixed feature extractor: no gradient for the body; its BatchNorm statistics still move
        model.body.requires_grad_(False)
    model = model.to(device, memory_format=torch.channels_last)
    train_loader = photo_loader(data.train, train_tf, cfg.workers, shuffle=True)
    val_loader = photo_loader(data.val, eval_tf, cfg.workers)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=MOMENTUM)
    # train_one_epoch steps the schedule every batch: every 7 epochs' batches is the tutorial's every 7 epochs
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, DECAY_EVERY * len(train_loader), DECAY)
    criterion, best, best_state = nn.CrossEntropyLoss(), -1.0, None
    for epoch in range(epochs):
        train_one_epoch(model, train_loader, nn.Identity(), criterion, optimizer, scheduler, device,
                        desc=f"epoch {epoch + 1}/{epochs}")
        accuracy = evaluate(model, val_loader, nn.Identity(), criterion, device)["accuracy"]
        if accuracy > best:
            best, best_state = accuracy, copy.deepcopy(model.state_dict())
        report(json.dumps({"epoch": epoch + 1, "val_accuracy": round(accuracy, 5), "time": round(time.time(), 2)}))
    model.load_state_dict(best_state)
    test = data.test or data.val
    accuracy = evaluate(model, photo_loader(test, eval_tf, cfg.workers), nn.Identity(), criterion, device)["accuracy"]
    report(json.dumps({"test_accuracy": round(accuracy, 5), "time": round(time.time(), 2)}))
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    parser.add_argument("--frozen", action="store_true", help="train the last layer only (fixed feature extractor)")
    args = parser.parse_args(argv)
    cfg, _ = config_from_args(args)
    try:
        train_tutorial(cfg, cfg.epochs or 25, args.frozen, report=lambda line: print(line, flush=True))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
