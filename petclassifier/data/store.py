"""Rows on disk, read batch by batch: decoded photos and frozen features, kept in the cache folder between runs.

A file of equal-shaped rows is read with `pread` into fresh tensors rather than memory-mapped: a mapped file's
pages count towards the process's memory as they are touched, so a pass over 25,000 photos would hold them all.
Read this way, recently read rows stay in the kernel's page cache (fast to read again) and the process's own
memory stays flat however large the dataset.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import socket
from pathlib import Path
from typing import Protocol

import torch

MEMORY_BUDGET = 2 * 1024**3  # bytes of frozen features kept in memory by a training run; the rest go to disk
FEATURE_DTYPE = torch.float16  # frozen features: half the memory of float32, differences far below the noise
HALF_DTYPES = (torch.float16, torch.bfloat16)  # bfloat16: computed so under CUDA autocast, and kept as computed
FEATURE_FORMAT = 4  # raise whenever code that shapes cached features changes: every earlier entry goes stale
TEMP_MARK = ".tmp"  # a file being written is named <name>.tmp<host>-<pid> until complete
HOST = socket.gethostname()
DEFAULT_LIMIT = 20 * 10**9  # bytes the cache folder may hold; the least recently used entries go past it
LIMIT_FILE = "limit.json"  # in the cache folder: {"bytes": N}, set by `petclassifier cache --limit-gb`
IN_USE: set[Path] = set()  # cache files this process has opened: never removed by its own clean-up


class Rows(Protocol):
    """Rows of photos or features read by index or slice: a RowFile on disk, or a tensor in memory."""

    def __len__(self) -> int: ...

    def __getitem__(self, index) -> torch.Tensor: ...


class RowFile:
    """`count` rows of `shape` and `dtype` in one file; `rows[i]`, `rows[a:b]` and `rows[index_tensor]` read them."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: torch.dtype, count: int):
        self.path, self.row_shape, self.dtype, self.count = Path(path), tuple(shape), dtype, count
        self.row_bytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        self.fd = os.open(self.path, os.O_RDONLY)
        IN_USE.add(self.path)

    @classmethod
    def create(cls, path: str | Path, shape: tuple[int, ...], dtype: torch.dtype, blocks) -> RowFile:
        """Write the tensors of `blocks` (each [k, *shape]) one after the other, then open the file for reading."""
        count = 0
        with open(path, "wb") as f:
            for block in blocks:
                raw = block.to("cpu", dtype).contiguous().flatten().view(torch.uint8)  # numpy has no bfloat16
                f.write(raw.numpy().tobytes())
                count += len(block)
        return cls(path, shape, dtype, count)

    @property
    def nbytes(self) -> int:
        return self.count * self.row_bytes

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.row_shape)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self[[index]][0]
        if isinstance(index, slice):
            start, stop, step = index.indices(self.count)
            if step == 1:  # one read for a run of rows
                return self._read(start, max(0, stop - start))
            index = range(start, stop, step)
        indices = index.tolist() if isinstance(index, torch.Tensor) else list(index)
        out = torch.empty((len(indices), *self.row_shape), dtype=self.dtype)
        for k, i in enumerate(indices):
            if not -self.count <= i < self.count:
                raise IndexError(f"row {i} of {self.count}")
            out[k] = self._read(i % self.count, 1)[0]
        return out

    def _read(self, start: int, n: int) -> torch.Tensor:
        """Rows start..start+n read straight into the tensor returned: one copy in memory, not two (a whole split
        of decoded photos, loaded for the GPU, is as large as the dataset)."""
        out = torch.empty((n, *self.row_shape), dtype=self.dtype)
        buffer, offset, done = memoryview(out.view(torch.uint8).numpy()).cast("B"), start * self.row_bytes, 0
        while done < len(buffer):
            if hasattr(os, "preadv"):
                got = os.preadv(self.fd, [buffer[done:]], offset + done)
            else:  # no preadv (Windows, older macOS): a chunk at a time through a bytes object
                chunk = os.pread(self.fd, min(len(buffer) - done, 1 << 26), offset + done)
                buffer[done : done + len(chunk)], got = chunk, len(chunk)
            if got == 0:
                raise OSError(f"{self.path} is shorter than its {self.count} rows (truncated?)")
            done += got
        return out

    def load(self) -> torch.Tensor:
        """Every row, as one tensor in memory."""
        return self[0 : self.count]

    def close(self) -> None:
        # no fd at all: the constructor (or a worker's unpickling) stopped before the file was open
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
        self.fd = None

    def __del__(self):
        self.close()

    def __getstate__(self) -> dict:  # a DataLoader worker opens the file for itself
        return {k: v for k, v in self.__dict__.items() if k != "fd"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.fd = os.open(self.path, os.O_RDONLY)


def feature_dtype(computed: torch.dtype) -> torch.dtype:
    """The dtype frozen features are kept in: half precision, bfloat16 where they were computed in it (a GPU's autocast:
    float16 would round them a second time and overflow past 65,504), else float16."""
    return computed if computed in HALF_DTYPES else FEATURE_DTYPE


class FeatureStore:
    """Frozen features in half precision (feature_dtype), kept on disk under a key of everything that determines them
    (a later run with the same key reads them instead of computing them again), and in memory on their device up to a
    budget."""

    def __init__(self, folder: str | Path, budget: int | None = None):
        self.folder, self.left, self.temporary = Path(folder), MEMORY_BUDGET if budget is None else budget, []

    def find(self, key: str, device: torch.device):
        """The features kept under `key` (a tensor, or a RowFile past the budget), or None."""
        try:
            info = json.loads((self.folder / f"{key}.json").read_text())
            dtype = getattr(torch, info["dtype"])
            if dtype not in HALF_DTYPES:
                raise ValueError(info["dtype"])
            rows = RowFile(self.folder / f"{key}.f16", info["shape"], dtype, info["count"])
        except (OSError, ValueError, KeyError, AttributeError):  # not there, or half removed by a clean-up
            return None
        if os.fstat(rows.fd).st_size != rows.nbytes:
            return None
        touch(rows.path)
        return self.within_budget(rows, device)

    def keep(self, blocks, key: str | None = None):
        """All rows of `blocks` (tensors [k, ...]), kept under `key` for later runs (None: for this run only): one
        tensor on the blocks' device within the budget, else a RowFile."""
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_abandoned(self.folder)  # files of runs killed before they could remove them
        blocks = iter(blocks)
        first = next(blocks)
        final = self.folder / f"{key or len(self.temporary)}.f16"
        path = temp_path(final)
        try:
            rows = RowFile.create(path, first.shape[1:], feature_dtype(first.dtype), itertools.chain([first], blocks))
            if key is None:
                self.temporary.append(path)
            else:
                meta = temp_path(self.folder / f"{key}.json")
                meta.write_text(json.dumps({"shape": list(rows.row_shape), "count": rows.count,
                                            "dtype": str(rows.dtype).removeprefix("torch.")}))
                os.replace(path, final)
                os.replace(meta, self.folder / f"{key}.json")
                rows.path = final
                IN_USE.add(final)
                trim(self.folder.parent)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return self.within_budget(rows, first.device)

    def within_budget(self, rows: RowFile, device: torch.device):
        if rows.nbytes > self.left:  # past the budget: read back batch by batch
            return rows
        self.left -= rows.nbytes
        loaded = rows.load().to(device)
        if rows.path in self.temporary:  # in memory now: this run needs its file no more
            rows.path.unlink()
            self.temporary.remove(rows.path)
        return loaded

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        for path in self.temporary:
            path.unlink(missing_ok=True)


def entry_key(*parts) -> str:
    """A cache entry's name: a digest of everything that determines its contents."""
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:24]


def touch(path: Path) -> None:
    """Mark an entry as just used: the clean-up removes the least recently used first."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache still serves
        pass


def cache_limit(root: str | Path) -> int:
    """Bytes the cache folder may hold."""
    try:
        return int(json.loads((Path(root) / LIMIT_FILE).read_text())["bytes"])
    except (OSError, ValueError, KeyError):
        return DEFAULT_LIMIT


def cache_entries(root: str | Path) -> list[tuple[float, int, list[Path]]]:
    """(last used, bytes, files) of every complete entry under the cache folder, least recently used first."""
    root, found = Path(root), []
    for data in root.glob("*/*"):
        if data.suffix in (".u8", ".f16") and TEMP_MARK not in data.name:
            found.append([data, data.with_suffix(".json")])
    for model in root.glob("onnx/**/*.onnx"):  # frozen stages exported (and int8), checkpoints' ONNX copies
        if TEMP_MARK not in str(model.relative_to(root)):
            found.append([model.with_name("answers.json"), model] if model.parent.parent.name == "copies" else [model])
    entries = []
    for files in found:
        try:
            used = files[-1].stat().st_mtime if files[-1].suffix == ".onnx" else files[0].stat().st_mtime
            entries.append((used, sum(f.stat().st_size for f in files if f.exists()), files))
        except FileNotFoundError:  # removed meanwhile
            continue
    return sorted(entries, key=lambda e: e[0])


def trim(root: str | Path) -> None:
    """Remove the least recently used entries until the cache is within its limit (never one this process reads)."""
    entries = cache_entries(root)
    total, limit = sum(size for _, size, _ in entries), cache_limit(root)
    for _, size, files in entries:
        if total <= limit:
            break
        if files[0] in IN_USE:
            continue
        for f in files:  # a process still reading a removed file keeps its open descriptor
            f.unlink(missing_ok=True)
        total -= size


class Batches:
    """(rows, labels) in order, batch by batch, of this rank's share (every world-th row), read as needed."""

    def __init__(self, rows, labels: torch.Tensor, batch_size: int, rank: int = 0, world: int = 1):
        self.rows, self.labels, self.batch_size = rows, labels, batch_size
        self.indices = torch.arange(rank, len(labels), world)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.indices), self.batch_size):
            idx = self.indices[i : i + self.batch_size]
            yield self.rows[idx], self.labels[idx]


def temp_path(path: Path) -> Path:
    """Where `path` is written until it is complete, named after this machine and process."""
    return Path(f"{path}{TEMP_MARK}{HOST}-{os.getpid()}")


def remove_abandoned(folder: Path) -> None:
    """Delete temporary files whose process is gone (killed before it could clean up).

    Only this machine's: on a folder that machines share (an NFS home) another machine's process ids mean nothing
    here, and its live files must stay.
    """
    for tmp in folder.glob(f"*{TEMP_MARK}*"):
        host, _, pid = tmp.name.rsplit(TEMP_MARK, 1)[1].rpartition("-")
        if pid.isdigit() and host in ("", HOST) and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
