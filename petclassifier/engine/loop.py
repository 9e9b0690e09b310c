"""The loop itself: forward propagation, loss, backpropagation by autograd, a gradient step; and scoring a split.

Imported by the training run, the refit and the insight commands alike; it knows nothing of run folders.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import distributed
from ..config import TrainConfig
from ..runtime import autocast, progress


def train_one_epoch(model, loader, prepare, criterion, optimizer, scheduler, device, desc="train", totals=None,
                    on_step=None) -> float:
    """One pass over the training batches; returns the mean training loss (of this rank's photos).

    `totals` (the epoch's running loss sum and photo count) carries a resumed epoch on; `on_step(totals)` runs
    after every complete gradient step, when weights, optimizer and totals agree, to save or stop there.
    """
    model.train()
    totals = {"loss_sum": 0.0, "seen": 0} if totals is None else totals
    bar = progress(loader, desc=desc, unit="batch", leave=False)
    for x, y in bar:
        x, y = prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast(device):
            logits = model(x)  # forward propagation: [B, num_classes]
            loss = criterion(logits, y)
        value = loss.item()
        if distributed.any_rank(not math.isfinite(value)):  # stop before a bad step spoils the weights
            raise FloatingPointError(f"training loss became {value}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # backpropagation: autograd fills every parameter's .grad with d(loss)/d(parameter)
        optimizer.step()  # gradient descent: move each parameter a small step against its gradient
        scheduler.step()
        totals["loss_sum"] += value * len(y)
        totals["seen"] += len(y)
        bar.set_postfix(loss=f"{totals['loss_sum'] / totals['seen']:.3f}")
        if on_step is not None:
            on_step(totals)
    return totals["loss_sum"] / max(totals["seen"], 1)


@torch.inference_mode()
def evaluate(model, loader, prepare, criterion, device) -> dict:
    """Loss, accuracy and the logits [N, num_classes] over a whole split."""
    model.eval()
    total_loss, logits, labels = 0.0, [], []
    for x, y in loader:
        x, y = prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast(device):
            out = model(x).float()
        total_loss += criterion(out, y).item() * len(y)
        logits.append(out.cpu())
        labels.append(y.cpu())
    if not logits:  # this rank's share of a split smaller than the processes: none, while the others score theirs
        return {"loss": 0.0, "accuracy": 0.0, "logits": torch.zeros(0, 0), "labels": torch.zeros(0, dtype=torch.long)}
    logits, labels = torch.cat(logits), torch.cat(labels)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return {"loss": total_loss / len(labels), "accuracy": accuracy, "logits": logits, "labels": labels}


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def optimizer_and_schedule(trained: nn.Module, labels: torch.Tensor, cfg: TrainConfig):
    """AdamW over `trained`'s parameters, its warm-up and cosine schedule over cfg.epochs, and the batches per epoch
    (counted on the labels alone: no view of the photos is computed for it)."""
    learned = [w for w in trained.parameters() if w.requires_grad]  # not the frozen ImageNet classifier of the kinds
    optimizer = torch.optim.AdamW(learned, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(distributed.ShardedBatches(labels, labels, cfg.batch_size, cfg.seed))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch))
    return optimizer, scheduler, steps_per_epoch
