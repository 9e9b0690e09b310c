"""Phase 2 of a training run: the epochs, from the start or from where a last.pt stopped. Each epoch trains on its
view of the photos (loop.train_one_epoch: forward, loss, backpropagation, step), is evaluated on the validation
photos, and leaves a row in metrics.jsonl and the checkpoints to go on from.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .. import distributed
from ..data.store import Batches
from ..engine.frozen import to_float
from ..engine.loop import evaluate, optimizer_and_schedule, train_one_epoch
from ..engine.metrics import at_chance, chance_accuracy, luck_ceiling
from ..errors import SavedAndStopped
from ..models.checkpoint import save_checkpoint
from ..runtime import log, plural
from .resilience import StopRequest, describe_position, rank_state, resume_from, rng_state, set_rng_state

if TYPE_CHECKING:
    from .prepare import Prepared

CHANCE_CHECK_EPOCH = 3  # after this many epochs (or a quarter of them, if more) a run still at chance says so
# last.pt (with best.pt) is written at an epoch's end once this long has passed since the last write: a checkpoint of
# Lite2 takes ~0.1 s, and a head on 20 photos trains 100 epochs of 2 steps in ~1 s (writing each cost 12 s of 18)
SAVE_SECONDS = 30.0


def train_epochs(p: Prepared, trained: nn.Module, train_criterion, criterion, device, run_dir: Path,
                 run_started: float) -> float:
    """Phase 2: the epochs, from the start or from where a last.pt stopped; returns the best validation accuracy."""
    return Epochs(p, trained, train_criterion, criterion, device, run_dir).run(run_started)


class Epochs:
    """The epochs of one run and what they keep: the optimizer, the schedule, the position and the best accuracy.

    best.pt holds the best epoch's weights, last.pt all it takes to go on: both written at the end of an epoch
    SAVE_SECONDS after the last write (every epoch under torchrun), and of the last epoch; last.pt also every
    --save-every steps, on Ctrl-C after the current step, and on Ctrl-C between steps at the last epoch's end. The
    best weights wait in memory until then, so best.pt agrees with last.pt's record.
    """

    def __init__(self, p: Prepared, trained: nn.Module, train_criterion, criterion, device, run_dir: Path):
        cfg, rank, world = p.cfg, distributed.rank(), distributed.world_size()
        self.p, self.trained, self.device, self.run_dir = p, trained, device, run_dir
        self.train_criterion, self.criterion = train_criterion, criterion
        # Dropout masks: the same whether the photos were decoded or came from the cache (decoding draws from
        # torch's generator), and each rank its own, after the same initial weights everywhere.
        torch.manual_seed(cfg.seed + rank)
        self.augment = torch.Generator().manual_seed(cfg.seed + rank)  # each rank its own crops and flips
        self.train_prepare = to_float if p.train_views else (lambda x: p.prep.train_batch(x, self.augment))
        self.eval_prepare = to_float if p.val_views else p.prep.eval_batch
        self.val_loader = Batches(p.val_views[0] if p.val_views else p.val_images, p.val_labels, cfg.batch_size * 2,
                                  rank, world)  # each rank evaluates every world-th photo; the sums are reduced
        self.optimizer, self.scheduler, self.steps_per_epoch = optimizer_and_schedule(p.trainable, p.train_labels, cfg)
        self.last, self.metrics_file = run_dir / "last.pt", run_dir / "metrics.jsonl"
        self.meta = checkpoint_meta(p)
        self.state = {"epoch": 0, "step": 0, "best": -1.0, "best_loss": float("inf"), "totals": None, "epoch_lr": None}
        if cfg.resume:
            self.state.update(resumed_state(p, self.optimizer, self.scheduler, self.augment, device,
                                            self.metrics_file, run_dir))
        self.stop: StopRequest | None = None
        self.best_weights: dict | None = None  # the best epoch's checkpoint, until it is written
        self.learning = {t.data_ptr() for t in p.trainable.state_dict().values()}  # tensors the epochs change
        self.saved_at = time.perf_counter()
        self.unsaved: tuple | None = None  # (epoch, step, row) of the last epoch's end, until last.pt holds it

    def run(self, run_started: float) -> float:
        """Every epoch left, each: train on its view, evaluate, write its row and checkpoints; the best accuracy."""
        p, cfg, state = self.p, self.p.cfg, self.state
        self.announce()
        with StopRequest() as self.stop:
            try:
                for epoch in range(state["epoch"], cfg.epochs):
                    started = time.perf_counter()
                    self.train_one(epoch)
                    row = epoch_row(p, epoch, state, evaluate(p.trainable, self.val_loader, self.eval_prepare,
                                                              self.criterion, self.device), started, run_started)
                    self.keep(row)
                    self.unsaved = (epoch + 1, 0, row)
                    if epoch + 1 == cfg.epochs or self.due():
                        self.save_last(*self.unsaved)
                    if epoch + 1 == min(max(CHANCE_CHECK_EPOCH, cfg.epochs // 4), cfg.epochs):
                        warn_if_at_chance(p, row["val_accuracy"], f"after {plural(epoch + 1, 'epoch')}")
                    if distributed.any_rank(self.stop.requested) and epoch + 1 < cfg.epochs:
                        self.save_last(*self.unsaved)
                        stop_here(self.last, self.run_dir, epoch + 1, 0)
            except KeyboardInterrupt as e:  # Ctrl-C outside a step (a frozen pass of the next epoch's view)
                if self.unsaved is not None and not isinstance(e, SavedAndStopped):
                    self.save_last(*self.unsaved)  # the end of the last epoch: nothing has changed since
                raise
        return state["best"]

    def due(self) -> bool:
        """Whether last.pt is written at this epoch's end: SAVE_SECONDS after the last write; under torchrun at every
        epoch's end (its ranks would have to agree on a Ctrl-C between epochs)."""
        return distributed.world_size() > 1 or time.perf_counter() - self.saved_at > SAVE_SECONDS

    def announce(self) -> None:
        p, world = self.p, distributed.world_size()
        learned = sum(x.numel() for x in p.trainable.parameters() if x.requires_grad)
        frozen_pass = f", frozen pass on {p.cfg.backend}" if p.frozen_fast is not None else ""
        log(f"training {p.cfg.model} ({learned:,} trainable parameters) on "
            f"{self.device}{f' x {world} processes' if world > 1 else ''}{frozen_pass} for "
            f"{plural(p.cfg.epochs, 'epoch')}; run folder {self.run_dir}")

    def train_one(self, epoch: int) -> None:
        """One epoch's steps (forward, loss, backward, step: loop.train_one_epoch), from where a resume stopped."""
        p, state, skip = self.p, self.state, self.state["step"]
        state["epoch"] = epoch
        if not skip:
            state["totals"], state["epoch_lr"] = {"loss_sum": 0.0, "seen": 0}, self.optimizer.param_groups[0]["lr"]
        batches = distributed.ShardedBatches(p.train_inputs(epoch), p.train_labels, p.cfg.batch_size, p.cfg.seed)
        batches.set_position(epoch, skip)
        try:
            train_one_epoch(self.trained, batches, self.train_prepare, self.train_criterion, self.optimizer,
                            self.scheduler, self.device, desc=f"epoch {epoch + 1}/{p.cfg.epochs}",
                            totals=state["totals"], on_step=self.on_step)
        except FloatingPointError as e:
            kept = f"; {self.last} holds the last good state" if self.last.is_file() else ""
            raise FloatingPointError(f"{e}{kept}") from None
        state["step"] = 0

    def keep(self, row: dict) -> None:
        """The epoch's row appended to metrics.jsonl; its weights kept for best.pt when it is the best so far."""
        if distributed.is_main():
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")
        # at equal accuracy the lower validation loss: a few validation photos are all right from the first epoch
        # on, and that epoch's head, barely trained, gave them 77% where the last gave 99.9%
        if (row["val_accuracy"], -row["val_loss"]) > (self.state["best"], -self.state["best_loss"]):
            self.state.update(best=row["val_accuracy"], best_loss=row["val_loss"])
            if distributed.is_main():  # a copy of what learns; the frozen stages' tensors stay as they are
                weights = {k: v.detach().clone() if v.data_ptr() in self.learning else v
                           for k, v in self.p.model.state_dict().items()}
                self.best_weights = {**self.meta, "model_state": weights, "metrics": row}

    def save_last(self, epoch: int, step: int, metrics: dict | None) -> None:
        """last.pt: all it takes to go on exactly after `step` batches of epoch `epoch` (0-based), and best.pt where
        a better epoch came since the last write; rank 0 writes."""
        state = self.state
        ranks = distributed.gather({"rng": rng_state(self.augment, self.device), "totals": dict(state["totals"])})
        self.saved_at, self.unsaved = time.perf_counter(), None
        if distributed.is_main():
            if self.best_weights is not None:  # first: last.pt's best accuracy is then always best.pt's
                save_checkpoint(self.best_weights, self.run_dir / "best.pt")
                self.best_weights = None
            save_checkpoint({**self.meta, "model_state": self.p.model.state_dict(), "metrics": metrics,
                             "epoch": epoch, "step": step, "epoch_lr": state["epoch_lr"],
                             "best_accuracy": state["best"], "best_loss": state["best_loss"],
                             "optimizer": self.optimizer.state_dict(),
                             "scheduler": self.scheduler.state_dict(), "ranks": ranks}, self.last)

    def on_step(self, totals: dict) -> None:
        """After every complete step: save last.pt every --save-every steps, or on Ctrl-C and stop there."""
        self.state["step"] += 1
        self.unsaved = None  # a step of the next epoch has run: the last epoch's end is no place to go on from
        epoch, step, every = self.state["epoch"], self.state["step"], self.p.cfg.save_every
        stopping = distributed.any_rank(self.stop.requested)
        if stopping or (every and (epoch * self.steps_per_epoch + step) % every == 0
                        and step < self.steps_per_epoch):  # the epoch's own save follows its last step
            self.save_last(epoch, step, None)
        if stopping:
            stop_here(self.last, self.run_dir, epoch, step)


def epoch_row(p: Prepared, epoch: int, state: dict, val_result: dict, started: float, run_started: float) -> dict:
    """The epoch's line of metrics.jsonl (all ranks' sums), also printed."""
    loss_sum, seen = distributed.sum_over_ranks([state["totals"]["loss_sum"], state["totals"]["seen"]])
    train_loss = loss_sum / max(seen, 1)
    val_loss, val_accuracy = distributed.reduced(val_result)
    row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5),
           "val_accuracy": round(val_accuracy, 5), "val_photos": len(p.val_labels), "lr": state["epoch_lr"],
           "seconds": round(time.perf_counter() - started, 2),
           "elapsed": round(time.perf_counter() - run_started, 1),  # since the run started, setup included
           "time": round(time.time(), 2)}  # the wall clock (Unix seconds): lines runs up with each other
    log(f"epoch {row['epoch']:3d}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
        f"val acc {val_accuracy:.1%}  {row['seconds']:.1f}s")
    return row


def checkpoint_meta(p: Prepared) -> dict:
    """What every checkpoint of the run carries besides weights: enough to rebuild and use the model alone."""
    cfg = p.cfg
    return {"model_name": cfg.model, "class_names": p.data.class_names, "task": cfg.task,
            "species_of": p.data.species_of, "preprocessing": p.prep.as_dict(), "config": asdict(cfg),
            "imagenet_stages": cfg.imagenet_stages, "flip_tta": cfg.flip_tta,
            "kinds": p.model.kind_features() is not None, "backend": cfg.backend}


def resumed_state(p: Prepared, optimizer, scheduler, augment, device, metrics_file: Path, run_dir: Path) -> dict:
    """Where a resumed run goes on: the weights, optimizer, schedule and generators of its last.pt, loaded."""
    cfg = p.cfg
    ckpt = resume_from(cfg.resume, p.model, optimizer, scheduler, checkpoint_meta(p))
    epoch, step = ckpt["epoch"], ckpt["step"]
    mine = rank_state(ckpt, step)
    set_rng_state(mine["rng"], augment, device)
    state = {"epoch": epoch, "step": step, "best": ckpt["best_accuracy"],
             "best_loss": ckpt.get("best_loss", float("inf"))}
    if step:
        state.update(totals=dict(mine["totals"]), epoch_lr=ckpt["epoch_lr"])
    if distributed.is_main() and metrics_file.exists():  # rows after the checkpoint are redone below
        rows = [line for line in metrics_file.read_text().splitlines()
                if line.strip() and json.loads(line)["epoch"] <= epoch]
        metrics_file.write_text("".join(row + "\n" for row in rows))
    log(f"resumed from {cfg.resume} {describe_position(epoch, step)}")
    if cfg.epochs != ckpt["config"]["epochs"]:
        log(f"--epochs {cfg.epochs}: the learning-rate schedule is stretched from the run's "
            f"{ckpt['config']['epochs']} epochs to {cfg.epochs}")
    return state


def stop_here(last: Path, run_dir: Path, epoch: int, step: int) -> None:
    log(f"interrupted: saved {last} {describe_position(epoch, step)}; continue with --resume {run_dir}")
    raise SavedAndStopped


def warn_if_at_chance(p: Prepared, accuracy: float, when: str) -> None:
    """A warning, with what to try, when validation accuracy is no better than answering the commonest class."""
    classes = len(p.data.class_names)
    if not at_chance(accuracy, p.val_labels, classes):
        return
    chance, n = chance_accuracy(p.val_labels, classes), len(p.val_labels)
    tips = ["more epochs", "more photos"] if p.cfg.pretrained else \
        ["ImageNet weights (leave out --no-pretrained, or use the default model)", "more photos", "more epochs"]
    log(f"warning: {when} validation accuracy {accuracy:.1%} on {plural(n, 'photo')} is no better than luck: always "
        f"answering the commonest of {classes} classes scores {chance:.1%}, and on {n} photos luck alone reaches "
        f"{luck_ceiling(p.val_labels, classes):.1%}; the network has not shown it tells these photos apart yet. Try "
        f"{', '.join(tips)}, or a lower --lr if the training loss is not falling")
