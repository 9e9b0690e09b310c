"""Multi-process training with PyTorch's own engine: `torchrun --nproc_per_node=N scripts/train.py ...`.

Every other module stays single-process: they call these helpers, which do nothing when torchrun did not start
the process. One process per GPU (NCCL), or CPU processes talking over gloo; on one machine or several.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import UserError

# The other processes wait while each machine's first one checks and decodes the photos (`local_main_first`,
# `per_machine`): minutes for a large set, past NCCL's default 10 before a collective is declared hung. Those waits
# go through a process group of their own; every other collective is done in seconds, and one that waits past
# COLLECTIVE_WAIT means a process has hung or died: the others stop instead of waiting for hours.
WAIT = timedelta(hours=2)
COLLECTIVE_WAIT = timedelta(minutes=5)
_patient = None  # the process group of the long waits


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> tuple[torch.device, bool]:
    """Join torchrun's process group; returns this rank's device and whether this call created the group."""
    if not launched_by_torchrun():
        return device, False
    if device.type == "cuda":  # one GPU per process, picked by torchrun's LOCAL_RANK
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device, False
    global _patient
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_WAIT)
    _patient = dist.new_group(timeout=WAIT)  # every rank makes it, in the same order, as new_group requires
    return device, True


def teardown(created: bool) -> None:
    global _patient
    if created and dist.is_initialized():
        dist.destroy_process_group()
        _patient = None


def stopped_peer(error: Exception) -> UserError | None:
    """One line for a collective that failed because another process of the run died or stopped answering."""
    text = str(error)
    if world_size() == 1 or not any(s in text for s in ("Connection closed by peer", "Timed out", "timed out",
                                                         "Connection reset by peer")):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return UserError(f"process {rank()} of {world_size()} stops: another process of this run died or stopped "
                     f"answering (see its own output; {first[:200]})")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 alone writes checkpoints, logs and progress bars."""
    return rank() == 0


def local_rank() -> int:
    """This process's number on its own machine (torchrun numbers each machine's processes from 0)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if world_size() > 1 else 0


def barrier(patient: bool = False) -> None:
    """Every rank waits for the others; `patient`: as long as a machine's first process takes to decode (WAIT)."""
    if world_size() > 1:
        dist.barrier(group=_patient if patient else None)


def _device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over all ranks (float64, so the order of additions hardly matters)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one: all ranks then stop at the same step instead of hanging."""
    return sum_over_ranks([float(flag)])[0] > 0 if world_size() > 1 else flag


def gather(obj, patient: bool = False) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank; `patient`: waiting up to WAIT for it."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj, group=_patient if patient else None)
    return out


@contextmanager
def local_main_first():
    """The body runs on each machine's first process, then on the others, which find what it cached on that disk.

    Per machine, not once per job: machines do not share a disk, and the cache is on each one's own.
    """
    first = local_rank() == 0
    if not first:
        barrier(patient=True)
    try:
        yield
    finally:  # even after an error, so the others go on (and meet it themselves) rather than wait forever
        if first:
            barrier(patient=True)


def per_machine(fn):
    """fn() on each machine's first process alone; every process returns its own machine's result (or error).

    For work on the machine's files that all its processes need: listing and checking the photos, a download.
    """
    if world_size() == 1:
        return fn()
    result, error = None, None
    if local_rank() == 0:
        try:
            result = fn()
        except Exception as e:  # sent to the others, so they stop too instead of waiting for a result
            error = e
    # a user's error as it is; any other as a pointer to the first process's traceback (and surely picklable)
    sent = error if error is None or isinstance(error, UserError) else RuntimeError(
        f"the first process on this machine failed: {type(error).__name__}: {error}")
    # torchrun numbers a machine's processes consecutively: its first one is rank() - local_rank()
    result, sent = gather((result, sent), patient=True)[rank() - local_rank()]
    if error is not None:
        raise error
    if sent is not None:
        raise sent
    return result


def from_main(fn):
    """fn() on rank 0 alone; every rank returns its result: for rank 0's files, such as the run folder.

    Those are on rank 0's machine alone where machines do not share a disk.
    """
    if world_size() == 1:
        return fn()
    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm as a SyncBatchNorm, keeping the activation and dropout of timm's BatchNormAct2d.

    PyTorch's own conversion turns BatchNormAct2d into a plain SyncBatchNorm and so drops them (EfficientNet's
    ReLU6); timm's converts the other BatchNorm layers just as PyTorch's does. Parents are changed in place.
    """
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(module)


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the trained part when there are several ranks; the module itself otherwise.

    On GPUs BatchNorm becomes SyncBatchNorm, so batch statistics cover the global batch as in one process
    (PyTorch's SyncBatchNorm runs on accelerators only; on CPU each rank normalises with its own share).
    """
    if world_size() == 1:
        return module
    if device.type == "cuda":
        module = sync_batchnorm(module)
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


class ShardedBatches:
    """Shuffled batches of this rank's share of (inputs, labels), resumable at any step of any epoch.

    Each epoch's order is a permutation seeded by (seed, epoch) alone, so a resumed run, or a run on another
    number of ranks, sees the same global batches: global batch i is permutation[i*B : (i+1)*B], and rank r
    takes every world-th photo of it. Photos that do not fill a last global batch are dropped.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
        world = world_size()
        if batch_size % world:
            raise UserError(f"--batch-size {batch_size} (the global batch) must be a multiple of the {world} processes")
        self.inputs, self.labels, self.seed = inputs, labels, seed
        n = len(labels)
        if n < world:
            raise UserError(f"{n} training photos cannot be shared among {world} processes")
        self.batch_size = min(batch_size, n - n % world)  # a set smaller than one batch: one (smaller) batch
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Iterate `epoch`'s batches from batch number `start` on."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, len(self.labels) // self.batch_size - self.start)

    def __iter__(self):
        seeded = torch.Generator().manual_seed(self.seed * 10007 + self.epoch)
        order = torch.randperm(len(self.labels), generator=seeded)
        world, r, b = world_size(), rank(), self.batch_size
        for i in range(self.start, len(self.labels) // b):
            idx = order[i * b : (i + 1) * b][r::world]
            yield self.inputs[idx], self.labels[idx]


def in_rank_order(block: torch.Tensor | None, device: torch.device) -> list[torch.Tensor]:
    """Every rank's `block` (None: it had none), in rank order, on `device` of every rank: a sharded pass's rows."""
    if world_size() == 1:
        return [block] if block is not None else []
    # through pickles on the CPU: a few KB a photo, and gloo and NCCL alike move them
    blocks = gather(None if block is None else block.cpu())
    return [b.to(device) for b in blocks if b is not None]


def check_same_photos(paths: list[str]) -> None:
    """Stop every rank, naming the photos, where machines list a split's readable photos differently (a photo
    missing, or unreadable, on one of them): their ranks would otherwise train on different datasets."""
    if world_size() == 1:
        return
    lists = gather(paths)
    differ = sorted(set().union(*lists) - set.intersection(*map(set, lists)))
    if differ or any(lst != lists[0] for lst in lists):
        named = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise UserError(f"the machines see different photos ({named or 'in another order'}): every machine "
                        "needs the same readable photos at the same paths")


def gathered(result: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of an `evaluate` result with every rank's share of the split, on every rank."""
    shares = [share for share in gather((result["logits"], result["labels"])) if len(share[1])]  # none: no rows
    return torch.cat([lg for lg, _ in shares]), torch.cat([lb for _, lb in shares])


def reduced(result: dict) -> tuple[float, float]:
    """(loss, accuracy) of an `evaluate` result over all ranks' shares of the split."""
    if world_size() == 1:
        return result["loss"], result["accuracy"]
    n = len(result["labels"])
    correct = (result["logits"].argmax(1) == result["labels"]).sum().item() if n else 0
    loss_sum, correct, n = sum_over_ranks([result["loss"] * n, correct, n])
    return loss_sum / n, correct / n
