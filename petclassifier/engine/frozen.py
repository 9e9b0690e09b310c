"""The fast path of transfer learning: the frozen stages of a pretrained body run once per view of every photo,
and training reads their outputs (features) instead of running them every epoch."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import signal
import threading
import time
from contextlib import contextmanager

import torch
from torch import nn

from .. import distributed
from ..data import store as features_module  # its FEATURE_FORMAT read when keys are made
from ..data.store import FeatureStore, entry_key, feature_dtype
from ..data.transforms import augmentation_key
from ..models.net import fold_batchnorm
from ..runtime import autocast, inference_batch_size, log, progress, release_free_memory


@torch.inference_mode()
def frozen_features(frozen: nn.Module, images, transform, device: torch.device, desc: str, store: FeatureStore,
                    key: str | None = None):
    """Outputs of the frozen stages for one view of every photo: [N, C, h, w]; `transform(x, start)` makes the view
    of the uint8 batch `x` that starts at photo `start`.

    `frozen` should be BatchNorm-folded. Under torchrun each rank computes every world-th batch and all ranks
    receive every row. Kept by `store` in half precision (bfloat16 as a GPU computes them, else float16): on the
    device while they fit its memory budget (the epochs then read them from there), on disk past it; under `key`,
    for later runs too.
    """
    found = store.find(key, device) if key is not None else None
    if not distributed.any_rank(found is None):  # every rank has them: no rank waits for a pass the others skip
        log(f"{desc}: {len(found):,} photos from the cache")
        return found
    frozen.eval()
    batch_size, rank, world = pass_batch_size(frozen, device), distributed.rank(), distributed.world_size()
    starts, fits = range(0, len(images), batch_size), [batch_size]  # photos a forward pass holds on the device

    def blocks():
        for first in progress(range(0, len(starts), world), desc=desc, unit="batch", leave=False):
            mine = first + rank
            block = None
            if mine < len(starts):
                with autocast(device):
                    x = images[starts[mine] : starts[mine] + batch_size].to(device)
                    block = in_parts(frozen, transform(x, starts[mine]), fits)
                    block = block.to(feature_dtype(block.dtype))
            yield from distributed.in_rank_order(block, device)

    started = time.perf_counter()
    with ctrl_c_stops_at_once():
        features = store.keep(blocks(), key)
    release_free_memory()  # the pass's batches leave the heap fragmented: hand the free part back
    log(f"{desc}: {len(images):,} photos in {time.perf_counter() - started:.1f} s")
    return features


def in_parts(frozen: nn.Module, x: torch.Tensor, fits: list[int]) -> torch.Tensor:
    """frozen(x), `fits[0]` photos a pass, halved (and kept so for the passes after) where the device's memory runs
    out: the batch, which seeds the random views, stays what it is, so the features do not depend on the memory."""
    while True:
        try:
            return torch.cat([frozen(part) for part in x.split(fits[0])])
        except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError from PyTorch 2.5 on
            if fits[0] == 1:
                raise
            fits[0] = max(1, fits[0] // 2)
            if x.is_cuda:
                torch.cuda.empty_cache()
            log(f"frozen pass: {fits[0]} photos at a time fit the device's free memory")


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


def pass_batch_size(frozen: nn.Module, device: torch.device) -> int:
    """Photos per batch of a frozen pass: the engine's own (ONNX Runtime on one thread: one), else the device's."""
    return getattr(frozen, "batch_size", None) or inference_batch_size(device)


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
    trained on it is scored on views it learned from); the others random crops and flips, each drawn from a
    generator of its own, so a view is the same whatever epoch a run resumes at and however many ranks share it.
    With `photos` (what identifies the decoded photos: their cache entry's key) each view is kept in the cache
    folder for later runs, under a key of everything that determines it. `then` turns each view held in memory into
    what the learning layers read (KindInputs.rows), once.
    """

    def __init__(self, frozen: nn.Module, images, prep, name: str, count: int, mirror: bool, seed: int,
                 device: torch.device, store: FeatureStore, photos: str | None = None, then=None):
        self.frozen, self.images, self.prep, self.name, self.count = frozen, images, prep, name, count
        self.mirror, self.seed, self.device, self.store, self.kept = mirror, seed, device, store, []
        self.then = then
        self.source = None if photos is None else (photos, weights_digest(frozen), json.dumps(prep.as_dict()),
                                                   device.type, pass_batch_size(frozen, device), torch.__version__,
                                                   features_module.FEATURE_FORMAT, augmentation_key())

    def key(self, v: int) -> str | None:
        """The cache key of view `v`; None where the photos have none."""
        if self.source is None:
            return None
        view = "centre" if v == 0 else "mirror" if v == 1 and self.mirror else f"random {self.seed} {v}"
        return entry_key(*self.source, view)

    def transform(self, v: int):
        """View `v` of the batch of photos from `start` on: (x, start) -> the network's input."""
        if v == 0:
            return lambda x, start: self.prep.eval_batch(x)
        if v == 1 and self.mirror:
            return lambda x, start: self.prep.mirrored_batch(x)
        # each batch's crops from a generator of its own: the same whichever rank computes it
        return lambda x, start: self.prep.train_batch(x, torch.Generator().manual_seed(
            (self.seed * 10_007 + v) * 1_000_003 + start))

    def __getitem__(self, v: int):
        while len(self.kept) <= v:
            k = len(self.kept)
            what = "mirrored" if k == 1 and self.mirror else f"view {k + 1}/{max(self.count, v + 1)}"
            features = frozen_features(self.frozen, self.images, self.transform(k), self.device,
                                       f"frozen features ({self.name}, {what})", self.store, self.key(k))
            self.kept.append(self.then(features) if self.then and isinstance(features, torch.Tensor) else features)
        return self.kept[v]


def weights_digest(module: nn.Module) -> str:
    """A digest of a module's layers, parameters and buffers: what its features depend on."""
    digest = hashlib.sha256(str(module).encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def fast_frozen(frozen: nn.Module, pool: nn.Module | None = None) -> nn.Module:
    """The frozen stages for passes that learn nothing: BatchNorm folded (same function, fewer memory passes), and
    the head's global pool after them where only the head learns (a [C, 1, 1] row per photo, not [C, h, w])."""
    folded = fold_batchnorm(copy.deepcopy(frozen).eval())
    return nn.Sequential(folded, pool) if pool is not None else folded
