"""Runs that survive faults: the state that resumes a run exactly, stopping cleanly on Ctrl-C, deterministic mode."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

import torch

from . import distributed
from .checkpoint import load_checkpoint
from .errors import UserError


@contextmanager
def deterministic_mode(on: bool):
    """torch.use_deterministic_algorithms while training: bit-identical reruns and resumes (slower on GPUs)."""
    if not on:
        yield
        return
    previous, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS is deterministic only with this
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = benchmark


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM while training: finish the current step, save last.pt, then stop.

    A second Ctrl-C stops at once. Outside the main thread signals cannot be caught, and nothing changes.
    """

    def __init__(self):
        self.requested, self.previous = False, {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if distributed.is_main():
            print("\nstopping after this step to save last.pt (press Ctrl-C again to stop at once)", flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":  # dropout masks on a GPU come from its own generator
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def rank_state(ckpt: dict, step: int) -> dict:
    """This rank's random generators and running loss sums from a last.pt written by the same number of ranks."""
    ranks, world = ckpt["ranks"], distributed.world_size()
    if len(ranks) != world and step:
        raise UserError(f"this last.pt stopped mid-epoch with {len(ranks)} processes; resume it with as many "
                        f"(now {world})")
    return ranks[distributed.rank() % len(ranks)]


def resume_from(path, model, optimizer, scheduler, meta) -> dict:
    """Load a last.pt into the model, optimizer and scheduler; returns the checkpoint (epoch, step, RNG states)."""
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "ranks" not in ckpt:
        raise UserError(f"{path} holds no training state; resume from a last.pt")
    for key, what in (("model_name", "model"), ("class_names", "class list"), ("preprocessing", "preprocessing")):
        if ckpt[key] != meta[key]:
            mine, theirs = meta[key], ckpt[key]
            if key == "class_names":
                mine, theirs = f"{len(mine)} classes {mine[:3]}...", f"{len(theirs)} classes {theirs[:3]}..."
            raise UserError(f"{path} was trained with another {what} ({theirs}) than this run ({mine}); "
                            f"resume with the same dataset and model, or start a new run")
    try:
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError) as e:
        raise UserError(f"{path} does not fit this run (another --trainable-stages?): {str(e).splitlines()[0]}") \
            from None
    scheduler.load_state_dict(ckpt["scheduler"])
    return ckpt
