"""The decoded-image cache: every photo decoded once into a memory-mapped uint8 tensor."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .images import ImageError, load_image
from .runtime import progress
from .transforms import Preprocessing


def decode_images(paths: list[str], prep: Preprocessing, cache_dir: str, workers: int) -> tuple[torch.Tensor, list]:
    """All photos as one uint8 tensor [N, 3, R, R], decoded once and memory-mapped from the cache afterwards.

    The cache key covers every file's bytes and the resize, so a changed photo means a fresh decode. Returns the
    tensor of the readable photos and the list of (path, reason) of those that could not be read.
    """
    # the resize's interpolation too, but bicubic squares keep the key they always had: existing caches stay valid
    resampled = str(prep.resize) + ("" if prep.interpolation == "bicubic" else f" {prep.interpolation}")
    digest = hashlib.sha256(resampled.encode())
    for p in paths:
        digest.update(hashlib.sha1(Path(p).read_bytes()).digest())
    key = digest.hexdigest()[:24]
    store, meta = Path(cache_dir) / "images" / f"{key}.u8", Path(cache_dir) / "images" / f"{key}.json"
    side = prep.resize
    if not (store.exists() and meta.exists()):
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(f".tmp{os.getpid()}")
        out = torch.from_file(str(tmp), shared=True, size=len(paths) * 3 * side * side, dtype=torch.uint8)
        out = out.view(len(paths), 3, side, side)
        bad, kept = [], 0
        loader = torch.utils.data.DataLoader(_Decoder(paths, prep), batch_size=None, num_workers=workers)
        for path, x in progress(loader, total=len(paths), desc="decoding photos", unit="img", leave=False):
            if isinstance(x, str):
                bad.append((path, x))
            else:
                out[kept] = x
                kept += 1
        del out
        os.truncate(tmp, kept * 3 * side * side)
        os.replace(tmp, store)
        meta.write_text(json.dumps({"count": kept, "bad": bad}))
    info = json.loads(meta.read_text())
    n = info["count"]
    images = torch.from_file(str(store), shared=False, size=n * 3 * side * side, dtype=torch.uint8)
    return images.view(n, 3, side, side), [tuple(b) for b in info["bad"]]


class _Decoder(torch.utils.data.Dataset):
    """Decodes one photo per item in a worker process; an unreadable one yields its reason instead."""

    def __init__(self, paths: list[str], prep: Preprocessing):
        self.paths, self.prep = paths, prep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.paths[i], self.prep.square(load_image(self.paths[i], min_size=self.prep.resize))
        except ImageError as e:
            return self.paths[i], str(e)
