"""The decoded-photo cache: every photo decoded once into a file of uint8 squares, read back batch by batch.

An entry is keyed by the photos' paths, sizes and modification times (no file is read to find it) and by the
preprocessing; its list of unreadable files belongs to the same key, so it can never disagree with its images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

from . import distributed
from .errors import UserError
from .images import ImageError, load_image
from .runtime import log, progress
from .store import TEMP_MARK, RowFile, remove_abandoned
from .transforms import Preprocessing


def cache_key(paths: list[str], prep: Preprocessing) -> str:
    """A digest of the preprocessing and every photo's absolute path, size and modification time."""
    digest = hashlib.sha256(f"{prep.resize} {prep.interpolation}".encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"\0{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def decode_images(paths: list[str], prep: Preprocessing, cache_dir: str, workers: int) -> tuple[RowFile, list]:
    """The readable photos as rows [3, R, R] of a cache file, decoded once; and (path, reason) of the others."""
    folder = Path(cache_dir) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    remove_abandoned(folder)
    key, side = cache_key(paths, prep), prep.resize
    store, meta = folder / f"{key}.u8", folder / f"{key}.json"
    info = json.loads(meta.read_text()) if meta.is_file() else None
    if info is None or not store.is_file() or store.stat().st_size != info["count"] * 3 * side * side:
        info = write_entry(paths, prep, store, meta, workers)
    return RowFile(store, (3, side, side), torch.uint8, info["count"]), [tuple(b) for b in info["bad"]]


def write_entry(paths: list[str], prep: Preprocessing, store: Path, meta: Path, workers: int) -> dict:
    """Decode every photo (in `workers` processes) into `store`; temporary files until both files are complete."""
    tmp, tmp_meta = (Path(f"{p}{TEMP_MARK}{os.getpid()}") for p in (store, meta))
    bad, kept, started = [], 0, time.perf_counter()
    try:
        with open(tmp, "wb") as f:
            loader = torch.utils.data.DataLoader(PhotoDecoder(paths, prep), batch_size=None, num_workers=workers)
            for path, x in progress(loader, total=len(paths), desc="decoding photos", unit="img", leave=False):
                if isinstance(x, str):
                    bad.append((path, x))
                else:
                    f.write(x.numpy().tobytes())
                    kept += 1
        info = {"count": kept, "bad": bad}
        tmp_meta.write_text(json.dumps(info))
        os.replace(tmp, store)
        os.replace(tmp_meta, meta)
        log(f"decoded {len(paths):,} photos in {time.perf_counter() - started:.1f} s (cached for later runs)")
        return info
    finally:  # an interrupted decode leaves nothing behind
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)


def decode_split(split, prep: Preprocessing, cfg, skipped: list | None = None) -> tuple[RowFile, torch.Tensor]:
    """A split's photos (cache rows) and labels, leaving out (and reporting) unreadable files.

    The header check has already removed most bad files; this catches those only a full decode reveals
    (a truncated JPEG). Each is warned about and appended to `skipped`; with --strict-images it is an error.
    """
    with distributed.local_main_first():  # one process per machine decodes; the others then read its cache
        images, bad = decode_images(split.paths, prep, cfg.cache_dir, cfg.workers)
    if bad and cfg.strict_images:
        path, reason = bad[0]
        raise UserError(f"unreadable photo {path}: {reason} ({len(bad)} in all); remove it or leave out "
                        "--strict-images to skip such files")
    warn_unreadable(bad)
    if skipped is not None:
        skipped += bad
    bad_paths = {p for p, _ in bad}
    labels = torch.tensor([y for p, y in zip(split.paths, split.labels) if p not in bad_paths], dtype=torch.long)
    return images, labels


def warn_unreadable(bad: list[tuple[str, str]]) -> None:
    """One warning line for each photo left out because it could not be read: (path, reason)."""
    for path, reason in bad:
        log(f"warning: skipped unreadable photo {path}: {reason}")


def cache_size(cache_dir: str | Path) -> dict[str, int]:
    """Bytes and files in each part of the cache."""
    sizes = {}
    for part in sorted(p for p in Path(cache_dir).glob("*") if p.is_dir()):
        files = [f for f in part.rglob("*") if f.is_file()]
        sizes[part.name] = {"bytes": sum(f.stat().st_size for f in files), "files": len(files)}
    return sizes


def clear_cache(cache_dir: str | Path) -> None:
    """Remove everything the cache holds; the next run decodes again."""
    shutil.rmtree(cache_dir, ignore_errors=True)


def square_or_reason(source, prep: Preprocessing) -> torch.Tensor | str:
    """The uint8 square [3, R, R] the network sees for a photo (a path or a file object), or why it is unreadable."""
    try:
        return prep.square(load_image(source, min_size=prep.resize))
    except ImageError as e:
        return str(e)


class PhotoDecoder(torch.utils.data.Dataset):
    """Decodes one photo per item in a worker process; an unreadable one yields its reason instead."""

    def __init__(self, paths: list[str], prep: Preprocessing):
        self.paths, self.prep = paths, prep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.paths[i], square_or_reason(self.paths[i], self.prep)
