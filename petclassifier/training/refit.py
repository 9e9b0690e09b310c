"""The head trained again on pooled features, in seconds: the refit on train + val photos, and the cross-fitted scores
that calibrate a head (its probabilities are judged on photos that the head never learned from)."""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from ..config import TrainConfig
from ..data.splits import stratified_folds
from ..data.store import Batches
from ..engine.frozen import to_float
from ..engine.loop import evaluate, optimizer_and_schedule, train_one_epoch
from ..runtime import log

FOLDS = 5  # cross-fitting: each photo scored by a head trained on the other 4/5 of the photos


def train_head(trained: nn.Module, inputs_of, labels: torch.Tensor, criterion, cfg: TrainConfig, device,
               desc: str) -> float:
    """Train `trained` (at its initial weights) for the run's epochs on `inputs_of(epoch)` [N, ...] with `labels`
    [N], as the epochs of the run did; returns the last epoch's mean training loss."""
    optimizer, scheduler, _ = optimizer_and_schedule(trained, labels, cfg)
    loss = float("nan")
    for epoch in range(cfg.epochs):
        batches = distributed.ShardedBatches(inputs_of(epoch), labels, cfg.batch_size, cfg.seed)
        batches.set_position(epoch, 0)
        loss = train_one_epoch(trained, batches, to_float, criterion, optimizer, scheduler, device,
                               desc=f"{desc} {epoch + 1}/{cfg.epochs}")
    return loss


def refit(trained: nn.Module, inputs_of, labels: torch.Tensor, criterion, cfg: TrainConfig, device) -> None:
    """Train the head (back at its initial weights) on all labelled photos for the run's epochs."""
    log("refit: training the head again on the train and validation photos together")
    loss = train_head(trained, inputs_of, labels, criterion, cfg, device, "refit")
    log(f"refit: {cfg.epochs} epochs on {len(labels):,} photos, final train loss {loss:.4f}")


def cross_fitted_logits(trainable: nn.Module, trained: nn.Module, initial_head: dict, inputs_of, scored_views,
                        labels: torch.Tensor, criterion, cfg: TrainConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of every photo, each scored by a head trained as the refit is, on the other folds.

    `inputs_of(epoch)` are all photos' features an epoch trains on, `scored_views` the features a photo is scored
    on (the centre crop, and its mirror image with flip TTA: averaged). With k folds each head learns from (k-1)/k
    of the photos, so its scores on the rest are what the refit head's will be on new photos.
    """
    k = max(2, min(FOLDS, int(torch.bincount(labels.cpu()).min())))  # a class of 2 photos: 2 folds
    folds, rank, world = stratified_folds(labels, k, cfg.seed), distributed.rank(), distributed.world_size()
    scored_logits, scored_labels = [], []
    for i, held in enumerate(folds):
        kept = torch.cat([fold for j, fold in enumerate(folds) if j != i]).to(labels.device)
        held = held.to(labels.device)
        trainable.load_state_dict(initial_head)
        train_head(trained, lambda epoch, kept=kept: inputs_of(epoch)[kept], labels[kept], criterion, cfg, device,
                   f"cross-fit {i + 1}/{k}")
        passes = [distributed.gathered(evaluate(trainable, Batches(view[held], labels[held], cfg.batch_size * 2,
                                                                   rank, world), to_float, criterion, device))
                  for view in scored_views]
        scored_logits.append(torch.stack([logits for logits, _ in passes]).mean(0))
        scored_labels.append(passes[0][1])
    return torch.cat(scored_logits), torch.cat(scored_labels)
