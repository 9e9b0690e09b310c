"""A training run, as named phases: prepare (the photos, the model, the frozen views) -> epochs (forward, loss,
backpropagation, step; checkpoints and resume) -> finish (the temperature for the model it scores, the refit, the
test score), each a module of this folder (prepare.py, epochs.py, finish.py). The loop itself is engine/loop.py.

Fast path for transfer learning: the frozen first stages of a pretrained body compute their features once
(for a few augmented views of every photo), and the loop trains only the last stages and the head on them.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ..config import TrainConfig
from ..data.cache import warn_unreadable
from ..data.datasets import load_data
from ..data.store import FeatureStore
from ..errors import SavedAndStopped
from ..models.checkpoint import checkpoint_file, load_checkpoint
from ..models.registry import check_model_name
from ..runtime import duration, log, resolve_device
from .curves import write_curves
from .epochs import train_epochs
from .finish import finish
from .prepare import prepare
from .resilience import describe_position, deterministic_mode, resume_config


def run_dir_for(cfg: TrainConfig) -> Path:
    """--out, or runs/<date-time>-<model>-<task> (a folder dataset's run is named after the folder)."""
    if cfg.out:
        return Path(cfg.out)
    what = Path(cfg.data_dir).name if cfg.dataset == "folder" else cfg.task
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.model}-{what}"


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced set gets weight 1 everywhere (for --balance)."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).float()
    return len(labels) / (num_classes * counts)


def fit(cfg: TrainConfig, given: set[str] | None = None) -> dict:
    """Train a model as the config says; returns the run's summary (accuracies, checkpoint path).

    `given`: the fields the user set (flags on the command line), which a resumed run checks against its own even
    where they equal the defaults; None counts the fields that differ from the defaults. Under torchrun every process
    runs this: each trains on its share of every batch and rank 0 writes the files.
    """
    cfg = resume_config(cfg, given) if cfg.resume else cfg
    check_model_name(cfg.model)  # before the photos are listed, which can take a while
    resolved = cfg.resolved()
    device, created = distributed.setup(resolve_device(resolved.device))
    try:
        with deterministic_mode(resolved.deterministic), \
                FeatureStore(Path(resolved.cache_dir) / "features") as features:
            return run(cfg, device, features)
    except RuntimeError as e:  # torch.distributed's errors (DistBackendError too) are RuntimeErrors
        stopped = distributed.stopped_peer(e)
        if stopped is None:
            raise
        raise stopped from e
    finally:
        distributed.teardown(created)


def train(**overrides) -> dict:
    """Python API: `train(epochs=3, model="smallcnn")` takes the same fields as the CLI flags."""
    return fit(replace(TrainConfig(), **overrides), given=set(overrides))


def run(cfg: TrainConfig, device: torch.device, features: FeatureStore) -> dict:
    """The body of `fit` on one process (one rank) with its device chosen: the phases in order."""
    run_started = time.perf_counter()
    run_dir = Path(distributed.gather(str(run_dir_for(cfg.resolved())))[0])  # rank 0's name: the clock may tick
    try:
        return phases(cfg, device, features, run_dir, run_started)
    except KeyboardInterrupt as e:
        if not isinstance(e, SavedAndStopped):  # stopped outside a step (decoding, a frozen pass, the finish)
            say_how_to_go_on(cfg, run_dir)
        raise SavedAndStopped from None


def say_how_to_go_on(cfg: TrainConfig, run_dir: Path) -> None:
    """After Ctrl-C anywhere in a run: the --resume line where a last.pt holds its state, else what is kept."""
    last = run_dir / "last.pt"
    if not last.is_file() and cfg.resume:  # resumed into another folder, before its first save there
        last = checkpoint_file(cfg.resume, ("last.pt",))
    if last.is_file():
        ckpt = load_checkpoint(last)
        log(f"interrupted: {last} holds the run {describe_position(ckpt['epoch'], ckpt['step'])}; continue with "
            f"--resume {last.parent}")
    else:
        log("interrupted before the first epoch ended, so there is nothing to resume: run the same command again; "
            "the photos decoded and the frozen views finished so far are kept in the cache and not computed again")


def phases(cfg: TrainConfig, device: torch.device, features: FeatureStore, run_dir: Path, run_started: float) -> dict:
    """The run's phases in order: the photos, prepare, the epochs, the finish."""
    torch.manual_seed(cfg.seed)
    data = distributed.per_machine(lambda: load_data(cfg))  # each machine's first process checks the photos
    warn_unreadable(data.skipped)
    # the recipe sized to the photos and the processes (a resumed run's stays)
    cfg = cfg.resolved(train_photos=len(data.train.paths), processes=distributed.world_size())
    p = prepare(cfg, data, device, features)
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        p.cfg.save(run_dir / "config.json")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    train_criterion = criterion
    if cfg.balance:  # validation keeps the plain loss, so epochs stay comparable with and without --balance
        weights = class_weights(p.train_labels, len(data.class_names)).to(device)
        train_criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    trained = distributed.wrap(p.trainable, device)
    if cfg.compile:
        trained = torch.compile(trained)
    best_accuracy = train_epochs(p, trained, train_criterion, criterion, device, run_dir, run_started)
    summary = finish(p, trained, train_criterion, criterion, device, run_dir, best_accuracy, features)
    summary["seconds"] = round(time.perf_counter() - run_started, 1)  # from the run's start, setup included
    if distributed.is_main():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if cfg.curves:
            write_curves(run_dir)  # loss and accuracy per epoch, for people to see the learning
    log(last_line(summary, cfg.epochs))
    return summary


def last_line(summary: dict, epochs: int) -> str:
    """The run's result in one line: the score, the best epoch, the time it took and the checkpoint."""
    split_name, accuracy = ("test", summary["test_accuracy"]) if "test_accuracy" in summary else \
        ("val", summary["best_val_accuracy"])
    best = f"; best epoch {summary['best_epoch']} of {epochs}" if summary.get("best_epoch") else ""
    refit = ""
    if summary.get("refit"):
        refit = f" (then refit on train + val: {summary['cross_fitted_accuracy']:.1%} cross-fitted)"
    return (f"{split_name} accuracy {accuracy:.1%}{best}{refit}; {duration(summary['seconds'])} in all; checkpoint "
            f"{summary['checkpoint']}")


