"""Phase 1 of a run: the model (pretrained body, new head), the decoded photos, and the frozen views' sources, held
in `Prepared`, which the epochs and the finish work on."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .. import distributed
from ..config import TrainConfig
from ..data.cache import decode_split
from ..data.splits import PetData
from ..data.store import Batches, FeatureStore, Rows
from ..data.transforms import Preprocessing
from ..engine.backends import CALIBRATION_PHOTOS, on_backend, resolve_backend
from ..engine.frozen import Views, fast_frozen, fits_on_gpu, is_global_pool, to_float
from ..engine.loop import evaluate
from ..models.kinds import KindInputs
from ..models.registry import build_model
from ..runtime import log, plural


@dataclass
class Prepared:
    """What the epochs and the finish work on: the photos, the model and its parts, and how inputs reach it."""

    cfg: TrainConfig
    data: PetData
    prep: Preprocessing
    model: nn.Module
    trainable: nn.Module  # the stages that learn, and the head (KindInputs: a pooled head reading kinds)
    frozen_fast: nn.Module | None  # the frozen stages, BatchNorm folded (None: nothing is frozen)
    pooled: bool  # only the head learns, from globally pooled features: the refit and cross-fitting take seconds
    train_images: Rows  # uint8 squares [N, 3, R, R] (a cache file, or a tensor on the GPU)
    train_labels: torch.Tensor
    val_images: Rows
    val_labels: torch.Tensor
    skipped: list  # (path, reason) of photos left out as unreadable
    initial_head: dict | None  # the head's initial weights, where the finish trains heads again from them
    train_views: Views | None = None
    val_views: Views | None = None
    joined: dict = field(default_factory=dict)  # view -> train and val features joined, for the finish

    @property
    def rows_of(self):
        """What turns a view's features into the rows the learning layers read, once: None where they read them."""
        return self.trainable.rows if isinstance(self.trainable, KindInputs) else None

    def joined_inputs(self, epoch: int) -> torch.Tensor:
        """The train and val photos' features of epoch `epoch`'s view, joined (kept: the finish reads each often)."""
        v = epoch % self.cfg.augment_views
        if v not in self.joined:
            self.joined[v] = torch.cat([self.train_views[v][:], self.val_views[v][:]])
        return self.joined[v]

    def train_inputs(self, epoch: int):
        """What epoch `epoch` trains on: a frozen view of the training photos (cycling), or the photos."""
        return self.train_views[epoch % self.cfg.augment_views] if self.train_views else self.train_images

    def scored(self, images, views: Views | None, labels: torch.Tensor, criterion, device) -> tuple:
        """(logits, labels) of a split on every rank; with flip TTA averaged with the mirror images' logits."""
        if views is not None:
            passes = [(views[v], to_float) for v in ((0, 1) if self.cfg.flip_tta else (0,))]
        else:
            passes = [(images, self.prep.eval_batch)]
            if self.cfg.flip_tta:
                passes.append((images, self.prep.mirrored_batch))
        rank, world = distributed.rank(), distributed.world_size()
        scored = [distributed.gathered(evaluate(self.trainable, Batches(rows, labels, self.cfg.batch_size * 2, rank,
                                                                        world), prepare, criterion, device))
                  for rows, prepare in passes]
        return torch.stack([logits for logits, _ in scored]).mean(0), scored[0][1]


def describe(cfg: TrainConfig, data: PetData, train_labels: torch.Tensor, val_labels: torch.Tensor) -> str:
    """The photos a run learns from (readable ones only) and the recipe sized to them."""
    counts = Counter(train_labels.tolist())
    per_class = ", ".join(f"{name} {counts[i]}" for i, name in enumerate(data.class_names))
    n_test = len(data.test.paths) if data.test else 0
    steps = max(1, len(train_labels) // cfg.batch_size)
    views = f", {plural(cfg.augment_views, 'frozen view')} of each photo" if cfg.trainable_stages >= 0 else ""
    return (f"{len(data.class_names)} classes; {len(train_labels):,} train / {len(val_labels):,} val / {n_test:,} "
            f"test photos\ntrain photos per class: {per_class}\nrecipe: batches of {cfg.batch_size}, "
            f"{plural(steps, 'step')} an epoch for {plural(cfg.epochs, 'epoch')} ({steps * cfg.epochs:,} steps), "
            f"learning rate {cfg.lr:g}{views}")


def prepare(cfg: TrainConfig, data: PetData, device: torch.device, features: FeatureStore) -> Prepared:
    """Phase 1: the model (pretrained body, new head), the decoded photos, and the frozen views' sources."""
    prep = Preprocessing.for_model(cfg.model, cfg.image_size)
    cfg = replace(cfg, backend=resolve_backend(cfg.backend, device))  # saved as resolved: a resume keeps it
    # a pretrained model keeps its ImageNet classifier beside the new head: it says when a photo shows no pet
    model = build_model(cfg.model, len(data.class_names), cfg.pretrained, cfg.imagenet_stages, cfg.kinds)
    model = model.to(device, memory_format=torch.channels_last)
    frozen, trainable = model.split(cfg.trainable_stages)
    frozen.requires_grad_(False)
    skipped = list(data.skipped)
    train_images, train_labels = decode_split(data.train, prep, cfg, skipped)
    val_images, val_labels = decode_split(data.val, prep, cfg, skipped)
    log(describe(cfg, data, train_labels, val_labels))
    photos = (train_images.path.stem, val_images.path.stem)  # their cache entries: what the frozen views are of
    if device.type == "cuda" and fits_on_gpu(train_images, val_images):  # whole epochs then run from GPU memory
        train_images, train_labels, val_images = train_images.load().to(device), train_labels.to(device), \
            val_images.load().to(device)
    pooled = len(frozen) > 0 and cfg.trainable_stages == 0 and is_global_pool(model.head[0])
    if pooled and isinstance(model.head[-1], nn.Linear):  # zeros: a random start would stay in every direction
        nn.init.zeros_(model.head[-1].weight)  # that a few training photos never move it along
        nn.init.zeros_(model.head[-1].bias)
    if pooled and model.kind_features() is not None:  # the kinds computed once per view, not at every step
        trainable = KindInputs(model.head)
    p = Prepared(cfg, data, prep, model, trainable, None, pooled, train_images, train_labels, val_images,
                 val_labels, skipped, copy.deepcopy(trainable.state_dict()) if pooled else None)
    if len(frozen):  # the frozen stages run once per view, not once per epoch
        p.frozen_fast = on_backend(fast_frozen(frozen, model.head[0] if pooled else None), cfg.backend, prep.crop,
                                   cfg.cache_dir, lambda: calibration_batches(train_images, prep, cfg.seed))
        p.cfg = cfg = replace(cfg, backend=p.frozen_fast.backend)  # int8 that failed its check runs float32
        splits = (("train", train_images), ("val", val_images))
        p.train_views, p.val_views = (
            Views(p.frozen_fast, images, prep, name, cfg.augment_views, cfg.flip_tta, cfg.seed + i, device, features,
                  photos[i], p.rows_of) for i, (name, images) in enumerate(splits))
    return p


def calibration_batches(images, prep: Preprocessing, seed: int, batch_size: int = 8):
    """Centre crops of up to CALIBRATION_PHOTOS training photos drawn at random: what sets int8's ranges."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:CALIBRATION_PHOTOS]
    for i in range(0, len(order), batch_size):
        yield prep.eval_batch(images[order[i : i + batch_size].sort().values].cpu())
