"""Rows on disk, read batch by batch: decoded photos, and frozen features that do not fit the memory budget.

A file of equal-shaped rows is read with `pread` into fresh tensors rather than memory-mapped: a mapped file's
pages count towards the process's memory as they are touched, so a pass over 25,000 photos would hold them all.
Read this way, recently read rows stay in the kernel's page cache (fast to read again) and the process's own
memory stays flat however large the dataset.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import torch

MEMORY_BUDGET = 2 * 1024**3  # bytes of frozen features kept in memory by a training run; the rest go to disk
FEATURE_DTYPE = torch.float16  # frozen features: half the memory of float32, differences far below the noise
TEMP_MARK = ".tmp"  # a file being written (a cache entry) or used for one run (features) is named <name>.tmp<pid>


class RowFile:
    """`count` rows of `shape` and `dtype` in one file; `rows[i]`, `rows[a:b]` and `rows[index_tensor]` read them."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: torch.dtype, count: int):
        self.path, self.row_shape, self.dtype, self.count = Path(path), tuple(shape), dtype, count
        self.row_bytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        self.fd = os.open(self.path, os.O_RDONLY)

    @classmethod
    def create(cls, path: str | Path, shape: tuple[int, ...], dtype: torch.dtype, blocks) -> RowFile:
        """Write the tensors of `blocks` (each [k, *shape]) one after the other, then open the file for reading."""
        count = 0
        with open(path, "wb") as f:
            for block in blocks:
                f.write(block.to("cpu", dtype).contiguous().numpy().tobytes())
                count += len(block)
        return cls(path, shape, dtype, count)

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
        data = os.pread(self.fd, n * self.row_bytes, start * self.row_bytes)
        if len(data) != n * self.row_bytes:
            raise OSError(f"{self.path} is shorter than its {self.count} rows (truncated?)")
        return torch.frombuffer(bytearray(data), dtype=self.dtype).view(n, *self.row_shape)

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


class FeatureStore:
    """A run's frozen features in half precision: in memory (on their device) up to a budget, on disk past it."""

    def __init__(self, folder: str | Path, budget: int | None = None):
        self.folder, self.left, self.files = Path(folder), MEMORY_BUDGET if budget is None else budget, []

    def keep(self, blocks, count: int):
        """All rows of `blocks` (tensors [k, ...] adding up to `count` rows): one tensor, or a RowFile on disk."""
        blocks = iter(blocks)
        first = next(blocks).to(FEATURE_DTYPE)
        need = count * first[0].numel() * first.element_size()
        if need > self.left:  # past the budget: stream the rows to a file, read back batch by batch
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_abandoned(self.folder)  # features of runs that were killed before they could remove them
            path = self.folder / f"{len(self.files)}.f16{TEMP_MARK}{os.getpid()}"
            self.files.append(path)
            return RowFile.create(path, first.shape[1:], FEATURE_DTYPE, itertools.chain([first], blocks))
        self.left -= need
        out = torch.empty((count, *first.shape[1:]), dtype=FEATURE_DTYPE, device=first.device)
        out[: len(first)], done = first, len(first)
        for block in blocks:
            out[done : done + len(block)] = block
            done += len(block)
        return out

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)


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


def remove_abandoned(folder: Path) -> None:
    """Delete temporary files of decodes whose process is gone (killed before it could clean up)."""
    for tmp in folder.glob(f"*{TEMP_MARK}*"):
        pid = tmp.name.rsplit(TEMP_MARK, 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
