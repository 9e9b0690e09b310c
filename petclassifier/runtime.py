"""Where and how the work runs: the one device, mixed precision as a context, and progress bars."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist
from tqdm import tqdm

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    """auto -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 mixed precision on CUDA; on CPU a context that does nothing."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def inference_batch_size(device: torch.device, flip_tta: bool = False) -> int:
    """Photos per forward pass when nothing is learned. A GPU wants large batches; a CPU small ones, which stay in its
    caches: the network seeing 8 photos a pass runs the Lites 1.3x faster than 16, 1.5x than 32 (2 cores). With flip
    TTA each pass also holds the mirror images, so half as many photos."""
    return (256 if device.type == "cuda" else 8) // (2 if flip_tta else 1)


def other_rank() -> bool:
    """True in every process but the first of a torchrun launch: they draw and print nothing."""
    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


def progress(iterable=None, disable: bool = False, **kwargs) -> tqdm:
    """A tqdm bar in a terminal, on the first process only; none in logs (cluster jobs, nohup, CI) it would flood."""
    return tqdm(iterable, disable=disable or other_rank() or not sys.stderr.isatty(), **kwargs)


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 photo', '3 photos' ('2 classes' with `nouns`)."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


def duration(seconds: float) -> str:
    """'42.0 s', or '2 min 11 s' past a minute."""
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {round(seconds % 60):d} s"


def log(message: str = "") -> None:
    """Print a line on the first process; on a line of its own even while a progress bar is drawn."""
    if not other_rank():
        tqdm.write(message, file=sys.stdout)



def release_free_memory() -> None:
    """Give the memory that freed tensors leave in the heap back to the OS (glibc only; elsewhere nothing).

    glibc keeps freed blocks for reuse, and with batches of tensors of many sizes its heap fragments and only
    grows: predicting 25,000 photos grew by 30 KB a photo. Trimming after each batch keeps memory flat (and costs
    about 5% of the batch's time); a fixed mmap threshold would too, at 20%.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None
