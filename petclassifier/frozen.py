"""The fast path of transfer learning: the frozen stages of a pretrained body run once per view of every photo,
and training reads their outputs (features) instead of running them every epoch."""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from contextlib import contextmanager

import torch
from torch import nn

from .models import fold_batchnorm
from .runtime import autocast, inference_batch_size, log, progress, release_free_memory
from .store import FeatureStore


@torch.inference_mode()
def frozen_features(frozen: nn.Module, images, transform, device: torch.device, desc: str, store: FeatureStore):
    """Outputs of the frozen stages for one view (`transform` of a uint8 batch) of every photo: [N, C, h, w].

    `frozen` should be BatchNorm-folded. Kept by `store`: in half precision on the device while they fit its
    memory budget (the epochs then read them from there), on disk past it.
    """
    frozen.eval()
    batch_size = inference_batch_size(device)

    def blocks():
        for i in progress(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
            with autocast(device):
                yield frozen(transform(images[i : i + batch_size].to(device)))

    started = time.perf_counter()
    with ctrl_c_stops_at_once():
        features = store.keep(blocks(), len(images))
    release_free_memory()  # the pass's batches leave the heap fragmented: hand the free part back
    log(f"{desc}: {len(images):,} photos in {time.perf_counter() - started:.1f} s")
    return features


@contextmanager
def ctrl_c_stops_at_once():
    """Ctrl-C raises KeyboardInterrupt within the batch, even where training's handler waits for the step's end."""
    # a pass holds no step to finish or save (its features are computed again on resume), and a view of a large
    # dataset takes half a minute: waiting for it to end looks like a hang
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, previous)  # training's own handler, for its steps


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float()  # cached features are kept in half precision; the trained layers compute in float32


def is_global_pool(module: nn.Module) -> bool:
    return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


def fits_on_gpu(*rows) -> bool:
    """Whether the decoded photos take at most half the GPU's free memory."""
    need = sum(len(r) * math.prod(r.row_shape) for r in rows)
    return need < torch.cuda.mem_get_info()[0] / 2


class Views:
    """The frozen stages' features of one split's photos, one tensor [N, C, h, w] per view, each computed when first
    asked for and kept.

    View 0 is the plain centre crop; with `mirror`, view 1 is its mirror image (what flip TTA scores, so a model
    trained on it is scored on views it learned from); the others random crops and flips. They are drawn in order
    from one generator, so a view is the same whatever epoch a run resumes at and however many ranks share it.
    """

    def __init__(self, frozen: nn.Module, images, prep, name: str, count: int, mirror: bool, seed: int,
                 device: torch.device, store: FeatureStore):
        self.frozen, self.images, self.prep, self.name, self.count = frozen, images, prep, name, count
        self.mirror, self.device, self.store, self.kept = mirror, device, store, []
        self.generator = torch.Generator().manual_seed(seed)

    def transform(self, v: int):
        if v == 0:
            return self.prep.eval_batch
        if v == 1 and self.mirror:
            return lambda x: self.prep.eval_batch(x).flip(-1)
        return lambda x: self.prep.train_batch(x, self.generator)

    def __getitem__(self, v: int):
        while len(self.kept) <= v:
            k = len(self.kept)
            what = "mirrored" if k == 1 and self.mirror else f"view {k + 1}/{max(self.count, v + 1)}"
            self.kept.append(frozen_features(self.frozen, self.images, self.transform(k), self.device,
                                             f"frozen features ({self.name}, {what})", self.store))
        return self.kept[v]


def fast_frozen(frozen: nn.Module, pool: nn.Module | None = None) -> nn.Module:
    """The frozen stages for passes that learn nothing: BatchNorm folded (same function, fewer memory passes), and
    the head's global pool after them where only the head learns (a [C, 1, 1] row per photo, not [C, h, w])."""
    folded = fold_batchnorm(copy.deepcopy(frozen).eval())
    return nn.Sequential(folded, pool) if pool is not None else folded
