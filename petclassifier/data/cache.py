"""The decoded-photo cache: every photo decoded once into a file of uint8 squares, read back batch by batch.

An entry holds one list of photos; it is keyed by their paths, sizes and modification times (no file is read to
find it) and by the preprocessing, and its list of unreadable files belongs to the same key, so it can never
disagree with its images. A new list (another split seed, one photo added) copies the squares other entries already
hold and decodes only the photos none has.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from itertools import chain
from pathlib import Path

import torch

from ..errors import UserError
from ..runtime import log, progress
from .images import decoded_batches, decoder_key
from .store import LIMIT_FILE, RowFile, entry_key, remove_abandoned, temp_path, touch, trim
from .transforms import Preprocessing

DECODE_BATCH = 16  # photos a decoding process is handed at a time


def photo_key(path: str) -> str:
    """What identifies a photo's file without reading it: its absolute path, size and modification time."""
    st = os.stat(path)
    return entry_key(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def prep_key(prep: Preprocessing) -> str:
    """What shapes an entry's squares besides its photos: their size, interpolation, the decoder and Pillow."""
    return f"{prep.resize} {prep.interpolation}, {decoder_key()}"


def decode_images(paths: list[str], prep: Preprocessing, cache_dir: str, workers: int) -> tuple[RowFile, list]:
    """The readable photos as rows [3, R, R] of a cache file, decoded once; and (path, reason) of the others."""
    folder = Path(cache_dir) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    remove_abandoned(folder)
    keys = [photo_key(p) for p in paths]
    key, side = entry_key(prep_key(prep), *keys), prep.resize
    store, meta = folder / f"{key}.u8", folder / f"{key}.json"
    try:
        info = json.loads(meta.read_text())
        complete = store.stat().st_size == info["count"] * 3 * side * side
    except (OSError, ValueError, KeyError):
        complete = False
    if complete:
        touch(store)
    else:
        info = write_entry(paths, keys, prep, store, meta, workers)
    return RowFile(store, (3, side, side), torch.uint8, info["count"]), [tuple(b) for b in info["bad"]]


def decoded_before(folder: Path, prep: Preprocessing, wanted: set[str]) -> dict[str, tuple[RowFile, int]]:
    """photo key -> (entry, row) for the wanted photos other entries of the same preprocessing already hold."""
    found = {}
    for meta in folder.glob("*.json"):
        try:
            info = json.loads(meta.read_text())
            if info.get("prep") != prep_key(prep) or not wanted.intersection(info.get("keys", ())):
                continue
            rows = RowFile(meta.with_suffix(".u8"), (3, prep.resize, prep.resize), torch.uint8, info["count"])
        except (OSError, ValueError, KeyError):  # removed meanwhile, or written by an older version
            continue
        if os.fstat(rows.fd).st_size == rows.nbytes and len(info["keys"]) == rows.count:
            found.update({k: (rows, i) for i, k in enumerate(info["keys"]) if k in wanted})
    return found


def write_entry(paths: list[str], keys: list[str], prep: Preprocessing, store: Path, meta: Path, workers: int) -> dict:
    """Decode the photos no other entry holds (in `workers` processes), copy the others, into `store`; temporary
    files until both files are complete."""
    tmp, tmp_meta = temp_path(store), temp_path(meta)
    bad, kept, started = [], [], time.perf_counter()
    before = decoded_before(store.parent, prep, set(keys))
    todo = [p for p, k in zip(paths, keys) if k not in before]
    batches = [todo[i : i + DECODE_BATCH] for i in range(0, len(todo), DECODE_BATCH)]
    decoding = decoded_batches(batches, prep.resize, prep.interpolation, workers)
    decoded = chain.from_iterable(zip(batch, squares) for batch, squares in zip(batches, decoding))
    try:
        with open(tmp, "wb") as f:
            for path, key in progress(zip(paths, keys), total=len(paths), desc="decoding photos", unit="img",
                                      leave=False):
                if key in before:
                    rows, i = before[key]
                    x = rows[i].numpy()
                else:
                    path, x = next(decoded)
                if isinstance(x, str):
                    bad.append((path, x))
                else:
                    f.write(x.tobytes())  # C order, as the rows are read back
                    kept.append(key)
        info = {"count": len(kept), "bad": bad, "prep": prep_key(prep), "keys": kept}
        tmp_meta.write_text(json.dumps(info))
        os.replace(tmp, store)
        os.replace(tmp_meta, meta)
        reused = f", {len(before):,} copied from earlier entries" if before else ""
        log(f"decoded {len(todo):,} photos{reused} in {time.perf_counter() - started:.1f} s (cached for later runs)")
        trim(store.parent.parent)
        return info
    finally:  # an interrupted decode leaves nothing behind, and no worker
        decoding.close()
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)


def decode_split(split, prep: Preprocessing, cfg, skipped: list | None = None) -> tuple[RowFile, torch.Tensor]:
    """A split's photos (cache rows) and labels, leaving out (and reporting) unreadable files.

    The header check has already removed most bad files; this catches those only a full decode reveals
    (a truncated JPEG). Each is warned about and appended to `skipped`; with --strict-images it is an error.
    """
    from .. import distributed  # here: predicting decodes photos through this module too, and needs no ranks

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
    distributed.check_same_photos([p for p in split.paths if p not in bad_paths])
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


def set_cache_limit(cache_dir: str | Path, limit: int) -> None:
    """Keep the cache within `limit` bytes from now on, removing the least recently used entries past it."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    (Path(cache_dir) / LIMIT_FILE).write_text(json.dumps({"bytes": limit}) + "\n")
    trim(cache_dir)


def clear_cache(cache_dir: str | Path) -> None:
    """Remove everything the cache holds; the next run decodes again."""
    shutil.rmtree(cache_dir, ignore_errors=True)
