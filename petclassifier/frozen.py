"""The fast path of transfer learning: the frozen stages of a pretrained body run once per view of every photo,
and training reads their outputs (features) instead of running them every epoch."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

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
    features = store.keep(blocks(), len(images))
    release_free_memory()  # the pass's batches leave the heap fragmented: hand the free part back
    log(f"{desc}: {len(images):,} photos in {time.perf_counter() - started:.1f} s")
    return features


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float()  # cached features are kept in half precision; the trained layers compute in float32


def is_global_pool(module: nn.Module) -> bool:
    return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


def fits_on_gpu(*rows) -> bool:
    """Whether the decoded photos take at most half the GPU's free memory."""
    need = sum(len(r) * math.prod(r.row_shape) for r in rows)
    return need < torch.cuda.mem_get_info()[0] / 2
