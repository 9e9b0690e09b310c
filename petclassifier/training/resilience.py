"""Runs that survive faults: the state that resumes a run exactly, stopping cleanly on Ctrl-C, deterministic mode."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

import torch

from .. import distributed
from ..config import TrainConfig
from ..errors import UserError
from ..models.checkpoint import check_class_names, checkpoint_file, load_checkpoint
from ..runtime import log

# Settings of how a run is carried out, not of what it learns: a resumed run may change them.
RUNTIME_FIELDS = ("device", "workers", "cache_dir", "out", "resume", "save_every", "compile", "deterministic",
                  "strict_images", "download", "flip_tta", "curves")


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
        log("stopping after this step to save last.pt (press Ctrl-C again to stop at once)")

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


def describe_position(epoch: int, step: int) -> str:
    """Where a run stands after `epoch` whole epochs and `step` batches of the next, as users count them."""
    return f"after step {step} of epoch {epoch + 1}" if step else f"after epoch {epoch}"


def training_state(path: str | Path) -> tuple[Path, dict]:
    """The last.pt that `--resume` names (a file, or a run folder holding one) and its contents."""
    path = checkpoint_file(path, ("last.pt",))
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "ranks" not in ckpt:
        raise UserError(f"{path} holds no training state; resume from a last.pt (or its run folder)")
    return path, ckpt


def resume_config(cfg: TrainConfig, given: set[str] | None = None) -> TrainConfig:
    """The interrupted run's own configuration, with the runtime settings `cfg` changes; nothing else may differ.

    `given` names the fields the user set (a flag given at its default value counts); None: those that differ from
    TrainConfig's defaults. --epochs may be raised: the learning-rate schedule then stretches to the new length.
    """
    path, ckpt = training_state(cfg.resume)
    # a run from before the kinds of animal (or the backends) existed has a head without them (learnt from torch's)
    saved = TrainConfig.from_dict({"kinds": ckpt.get("kinds", False), "backend": "torch", **ckpt.get("config", {})})
    defaults = TrainConfig()
    if given is None:
        given = {f.name for f in fields(TrainConfig) if getattr(cfg, f.name) != getattr(defaults, f.name)}
    for name in sorted(given - set(RUNTIME_FIELDS)):
        value, was = getattr(cfg, name), getattr(saved, name)
        if value == was or (name == "epochs" and value > was):
            continue
        flag = "--" + name.replace("_", "-")
        hint = "it can only be raised" if name == "epochs" else "leave it out to go on as the run was"
        raise UserError(f"{flag} {shown(value)} contradicts the run being resumed ({path} has {shown(was)}); {hint}")
    runtime = {name: getattr(cfg, name) for name in RUNTIME_FIELDS if name in given}
    runtime.update(resume=str(path), out=cfg.out or str(path.parent))  # the run goes on in its own folder
    epochs = cfg.epochs if "epochs" in given else saved.epochs
    if ckpt["epoch"] >= epochs and (path.parent / "summary.json").is_file():  # trained, calibrated and scored
        raise UserError(f"{path.parent} has finished its {epochs} epochs; to train it longer, resume it with more: "
                        f"--resume {path.parent} --epochs {2 * epochs}")
    return replace(saved, **runtime, epochs=epochs)


def shown(value) -> str:
    """A setting as a user reads it: on/off for a switch."""
    return ("off", "on")[value] if isinstance(value, bool) else str(value)


def resume_from(path, model, optimizer, scheduler, meta) -> dict:
    """Load a last.pt into the model, optimizer and scheduler; returns the checkpoint (epoch, step, RNG states)."""
    path, ckpt = training_state(path)
    check_class_names(ckpt, meta["class_names"], "the photos found now")  # the dataset changed on disk
    for key, what in (("model_name", "model"), ("preprocessing", "preprocessing")):
        if ckpt[key] != meta[key]:
            raise UserError(f"{path} was trained with another {what} ({ckpt[key]}) than this run ({meta[key]}); "
                            f"resume with the same model, or start a new run")
    try:
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError) as e:
        raise UserError(f"{path} does not fit this run (another --trainable-stages?): {str(e).splitlines()[0]}") \
            from None
    scheduler.load_state_dict(ckpt["scheduler"])
    return ckpt
