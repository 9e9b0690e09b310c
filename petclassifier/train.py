"""A training run, as named phases: prepare (the photos, the model, the frozen views) -> epochs (forward, loss,
backpropagation, step; checkpoints and resume) -> finish (the temperature for the model it scores, the refit, the
test score). The loop itself is loop.py.

Fast path for transfer learning: the frozen first stages of a pretrained body compute their features once
(for a few augmented views of every photo), and the loop trains only the last stages and the head on them.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from . import calibration, distributed
from .backends import CALIBRATION_PHOTOS, on_backend, resolve_backend
from .cache import decode_split, warn_unreadable
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import PetData, load_data
from .errors import SavedAndStopped
from .frozen import Views, fast_frozen, fits_on_gpu, is_global_pool, to_float
from .loop import evaluate, optimizer_and_schedule, train_one_epoch
from .metrics import at_chance, chance_accuracy, expected_calibration_error, mean_class_accuracy
from .models import build_model, check_model_name
from .plots import write_curves
from .refit import cross_fitted_logits, refit
from .resilience import (
    StopRequest,
    describe_position,
    deterministic_mode,
    rank_state,
    resume_config,
    resume_from,
    rng_state,
    set_rng_state,
)
from .runtime import log, resolve_device
from .store import Batches, FeatureStore
from .transforms import Preprocessing

CHANCE_CHECK_EPOCH = 3  # after this many epochs (or a quarter of them, if more) a run still at chance says so


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


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


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
    finally:
        distributed.teardown(created)


def train(**overrides) -> dict:
    """Python API: `train(epochs=3, model="smallcnn")` takes the same fields as the CLI flags."""
    return fit(replace(TrainConfig(), **overrides), given=set(overrides))


@dataclass
class Prepared:
    """What the epochs and the finish work on: the photos, the model and its parts, and how inputs reach it."""

    cfg: TrainConfig
    data: PetData
    prep: Preprocessing
    model: nn.Module
    trainable: nn.Module  # the stages that learn, and the head
    frozen_fast: nn.Module | None  # the frozen stages, BatchNorm folded (None: nothing is frozen)
    pooled: bool  # only the head learns, from globally pooled features: the refit and cross-fitting take seconds
    train_images: object  # uint8 squares [N, 3, R, R] (a cache file, or a tensor on the GPU)
    train_labels: torch.Tensor
    val_images: object
    val_labels: torch.Tensor
    skipped: list  # (path, reason) of photos left out as unreadable
    initial_head: dict | None  # the head's initial weights, where the finish trains heads again from them
    train_views: Views | None = None
    val_views: Views | None = None

    def train_inputs(self, epoch: int):
        """What epoch `epoch` trains on: a frozen view of the training photos (cycling), or the photos."""
        return self.train_views[epoch % self.cfg.augment_views] if self.train_views else self.train_images

    def scored(self, images, views: Views | None, labels: torch.Tensor, criterion, device) -> tuple:
        """(logits, labels) of a split on every rank; with flip TTA averaged with the mirror images' logits."""
        if views is not None:
            passes = [(views[v], to_float) for v in ((0, 1) if self.cfg.flip_tta else (0,))]
        else:
            passes = [(images, self.prep.eval_batch)]
            if self.cfg.flip_tta:
                passes.append((images, lambda x: self.prep.eval_batch(x).flip(-1)))
        rank, world = distributed.rank(), distributed.world_size()
        scored = [distributed.gathered(evaluate(self.trainable, Batches(rows, labels, self.cfg.batch_size * 2, rank,
                                                                        world), prepare, criterion, device))
                  for rows, prepare in passes]
        return torch.stack([logits for logits, _ in scored]).mean(0), scored[0][1]


def run(cfg: TrainConfig, device: torch.device, features: FeatureStore) -> dict:
    """The body of `fit` on one process (one rank) with its device chosen: the phases in order."""
    run_started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data = distributed.per_machine(lambda: load_data(cfg))  # each machine's first process checks the photos
    warn_unreadable(data.skipped)
    cfg = cfg.resolved(train_photos=len(data.train.paths))  # the recipe sized to the photos (a resumed run's stays)
    p = prepare(cfg, data, device, features)
    run_dir = Path(distributed.gather(str(run_dir_for(cfg)))[0])  # rank 0's name, in case the clock ticked
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
    split_name, accuracy = ("test", summary["test_accuracy"]) if "test_accuracy" in summary else ("val", best_accuracy)
    log(f"{split_name} accuracy {accuracy:.1%}; checkpoint {summary['checkpoint']}")
    return summary


def describe(cfg: TrainConfig, data: PetData, train_labels: torch.Tensor, val_labels: torch.Tensor) -> str:
    """The photos a run learns from (readable ones only) and the recipe sized to them."""
    counts = Counter(train_labels.tolist())
    per_class = ", ".join(f"{name} {counts[i]}" for i, name in enumerate(data.class_names))
    n_test = len(data.test.paths) if data.test else 0
    steps = max(1, len(train_labels) // cfg.batch_size)
    views = f", {plural(cfg.augment_views, 'frozen view')} of each photo" if cfg.trainable_stages >= 0 else ""
    return (f"{len(data.class_names)} classes; {len(train_labels):,} train / {len(val_labels):,} val / {n_test:,} "
            f"test photos\ntrain photos per class: {per_class}\nrecipe: batches of {cfg.batch_size}, "
            f"{plural(steps, 'step')} an epoch for {plural(cfg.epochs, 'epoch')} ({steps * cfg.epochs:,} steps), "
            f"learning rate {cfg.lr:g}{views}")


def prepare(cfg: TrainConfig, data: PetData, device: torch.device, features: FeatureStore) -> Prepared:
    """Phase 1: the model (pretrained body, new head), the decoded photos, and the frozen views' sources."""
    prep = Preprocessing.for_model(cfg.model, cfg.image_size)
    cfg = replace(cfg, backend=resolve_backend(cfg.backend, device))  # saved as resolved: a resume keeps it
    # a pretrained model keeps its ImageNet classifier beside the new head: it says when a photo shows no pet
    imagenet_stages = cfg.trainable_stages if cfg.pretrained and cfg.trainable_stages >= 0 else None
    model = build_model(cfg.model, len(data.class_names), cfg.pretrained, imagenet_stages, cfg.kinds)
    model = model.to(device, memory_format=torch.channels_last)
    frozen, trainable = model.split(cfg.trainable_stages)
    frozen.requires_grad_(False)
    skipped = list(data.skipped)
    train_images, train_labels = decode_split(data.train, prep, cfg, skipped)
    val_images, val_labels = decode_split(data.val, prep, cfg, skipped)
    log(describe(cfg, data, train_labels, val_labels))
    photos = (train_images.path.stem, val_images.path.stem)  # their cache entries: what the frozen views are of
    if device.type == "cuda" and fits_on_gpu(train_images, val_images):  # whole epochs then run from GPU memory
        train_images, train_labels, val_images = train_images.load().to(device), train_labels.to(device), \
            val_images.load().to(device)
    pooled = len(frozen) > 0 and cfg.trainable_stages == 0 and is_global_pool(model.head[0])
    if pooled and isinstance(model.head[-1], nn.Linear):  # zeros: a random start would stay in every direction
        nn.init.zeros_(model.head[-1].weight)  # that a few training photos never move it along
        nn.init.zeros_(model.head[-1].bias)
    p = Prepared(cfg, data, prep, model, trainable, None, pooled, train_images, train_labels, val_images,
                 val_labels, skipped, copy.deepcopy(trainable.state_dict()) if pooled else None)
    if len(frozen):  # the frozen stages run once per view, not once per epoch
        p.frozen_fast = on_backend(fast_frozen(frozen, model.head[0] if pooled else None), cfg.backend, prep.crop,
                                   cfg.cache_dir, lambda: calibration_batches(train_images, prep, cfg.seed))
        p.train_views, p.val_views = (
            Views(p.frozen_fast, images, prep, name, cfg.augment_views, cfg.flip_tta, cfg.seed + i, device, features,
                  photos[i]) for i, (name, images) in enumerate((("train", train_images), ("val", val_images))))
    return p


def calibration_batches(images, prep: Preprocessing, seed: int, batch_size: int = 8):
    """Centre crops of up to CALIBRATION_PHOTOS training photos drawn at random: what sets int8's ranges."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:CALIBRATION_PHOTOS]
    for i in range(0, len(order), batch_size):
        yield prep.eval_batch(images[order[i : i + batch_size].sort().values].cpu())


def train_epochs(p: Prepared, trained: nn.Module, train_criterion, criterion, device, run_dir: Path,
                 run_started: float) -> float:
    """Phase 2: the epochs, from the start or from where a last.pt stopped; returns the best validation accuracy.

    best.pt holds the best epoch's weights, last.pt all it takes to go on (at each epoch's end, every --save-every
    steps, and on Ctrl-C after the current step).
    """
    cfg, rank, world = p.cfg, distributed.rank(), distributed.world_size()
    # Dropout masks: the same whether the photos were decoded or came from the cache (decoding draws from
    # torch's generator), and each rank its own, after the same initial weights everywhere.
    torch.manual_seed(cfg.seed + rank)
    augment = torch.Generator().manual_seed(cfg.seed + rank)  # each rank its own crops and flips
    train_prepare = to_float if p.train_views else (lambda x: p.prep.train_batch(x, augment))
    eval_prepare = to_float if p.val_views else p.prep.eval_batch
    val_loader = Batches(p.val_views[0] if p.val_views else p.val_images, p.val_labels, cfg.batch_size * 2, rank,
                         world)  # each rank evaluates every world-th photo; the sums are reduced across ranks
    optimizer, scheduler, steps_per_epoch = optimizer_and_schedule(p.trainable, p.train_labels, cfg)
    last, metrics_file = run_dir / "last.pt", run_dir / "metrics.jsonl"
    meta = checkpoint_meta(p)
    state = {"epoch": 0, "step": 0, "best": -1.0, "totals": None, "epoch_lr": None}
    if cfg.resume:
        state.update(resumed_state(p, optimizer, scheduler, augment, device, metrics_file, run_dir))
    learned = sum(x.numel() for x in p.trainable.parameters() if x.requires_grad)
    frozen_pass = f", frozen pass on {cfg.backend}" if p.frozen_fast is not None else ""
    log(f"training {cfg.model} ({learned:,} trainable parameters) on "
        f"{device}{f' x {world} processes' if world > 1 else ''}{frozen_pass} for {plural(cfg.epochs, 'epoch')}; "
        f"run folder {run_dir}")

    def save_last(epoch: int, step: int, metrics: dict | None) -> None:
        """last.pt: all it takes to go on exactly after `step` batches of epoch `epoch` (0-based); rank 0 writes."""
        ranks = distributed.gather({"rng": rng_state(augment, device), "totals": dict(state["totals"])})
        if distributed.is_main():
            save_checkpoint({**meta, "model_state": p.model.state_dict(), "metrics": metrics, "epoch": epoch,
                             "step": step, "epoch_lr": state["epoch_lr"], "best_accuracy": state["best"],
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "ranks": ranks}, last)

    def on_step(totals: dict) -> None:
        """After every complete step: save last.pt every --save-every steps, or on Ctrl-C and stop there."""
        state["step"] += 1
        epoch, step = state["epoch"], state["step"]
        stopping = distributed.any_rank(stop.requested)
        if stopping or (cfg.save_every and (epoch * steps_per_epoch + step) % cfg.save_every == 0
                        and step < steps_per_epoch):  # the epoch's own save follows its last step
            save_last(epoch, step, None)
        if stopping:
            stop_here(last, run_dir, epoch, step)

    with StopRequest() as stop:
        for epoch in range(state["epoch"], cfg.epochs):
            started, skip = time.perf_counter(), state["step"]
            state["epoch"] = epoch
            if not skip:
                state["totals"], state["epoch_lr"] = {"loss_sum": 0.0, "seen": 0}, optimizer.param_groups[0]["lr"]
            batches = distributed.ShardedBatches(p.train_inputs(epoch), p.train_labels, cfg.batch_size, cfg.seed)
            batches.set_position(epoch, skip)
            try:
                train_one_epoch(trained, batches, train_prepare, train_criterion, optimizer, scheduler, device,
                                desc=f"epoch {epoch + 1}/{cfg.epochs}", totals=state["totals"], on_step=on_step)
            except FloatingPointError as e:
                kept = f"; {last} holds the last good state" if last.is_file() else ""
                raise FloatingPointError(f"{e}{kept}") from None
            state["step"] = 0
            row = epoch_row(p, epoch, state, evaluate(p.trainable, val_loader, eval_prepare, criterion, device),
                            started, run_started)
            if distributed.is_main():
                with open(metrics_file, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if row["val_accuracy"] > state["best"]:
                state["best"] = row["val_accuracy"]
                if distributed.is_main():
                    save_checkpoint({**meta, "model_state": p.model.state_dict(), "metrics": row}, run_dir / "best.pt")
            save_last(epoch + 1, 0, row)
            if epoch + 1 == min(max(CHANCE_CHECK_EPOCH, cfg.epochs // 4), cfg.epochs):
                warn_if_at_chance(p, row["val_accuracy"], f"after {plural(epoch + 1, 'epoch')}")
            if distributed.any_rank(stop.requested) and epoch + 1 < cfg.epochs:
                stop_here(last, run_dir, epoch + 1, 0)
    return state["best"]


def epoch_row(p: Prepared, epoch: int, state: dict, val_result: dict, started: float, run_started: float) -> dict:
    """The epoch's line of metrics.jsonl (all ranks' sums), also printed."""
    loss_sum, seen = distributed.sum_over_ranks([state["totals"]["loss_sum"], state["totals"]["seen"]])
    train_loss = loss_sum / max(seen, 1)
    val_loss, val_accuracy = distributed.reduced(val_result)
    row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5),
           "val_accuracy": round(val_accuracy, 5), "lr": state["epoch_lr"],
           "seconds": round(time.perf_counter() - started, 2),
           "elapsed": round(time.perf_counter() - run_started, 1),  # since the run started, setup included
           "time": round(time.time(), 2)}  # the wall clock (Unix seconds): lines runs up with each other
    log(f"epoch {row['epoch']:3d}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
        f"val acc {val_accuracy:.1%}  {row['seconds']:.1f}s")
    return row


def checkpoint_meta(p: Prepared) -> dict:
    """What every checkpoint of the run carries besides weights: enough to rebuild and use the model alone."""
    cfg = p.cfg
    imagenet_stages = cfg.trainable_stages if cfg.pretrained and cfg.trainable_stages >= 0 else None
    return {"model_name": cfg.model, "class_names": p.data.class_names, "task": cfg.task,
            "species_of": p.data.species_of, "preprocessing": p.prep.as_dict(), "config": asdict(cfg),
            "imagenet_stages": imagenet_stages, "flip_tta": cfg.flip_tta,
            "kinds": p.model.kind_features() is not None, "backend": cfg.backend}


def resumed_state(p: Prepared, optimizer, scheduler, augment, device, metrics_file: Path, run_dir: Path) -> dict:
    """Where a resumed run goes on: the weights, optimizer, schedule and generators of its last.pt, loaded."""
    cfg = p.cfg
    ckpt = resume_from(cfg.resume, p.model, optimizer, scheduler, checkpoint_meta(p))
    epoch, step = ckpt["epoch"], ckpt["step"]
    mine = rank_state(ckpt, step)
    set_rng_state(mine["rng"], augment, device)
    state = {"epoch": epoch, "step": step, "best": ckpt["best_accuracy"]}
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
    chance = chance_accuracy(p.val_labels, classes)
    tips = ["more epochs", "more photos"] if p.cfg.pretrained else \
        ["ImageNet weights (leave out --no-pretrained, or use the default model)", "more photos", "more epochs"]
    log(f"warning: {when} validation accuracy {accuracy:.1%} is at chance ({chance:.1%}: always answering the "
        f"commonest of {classes} classes); the network has not learned to tell these photos apart yet. Try "
        f"{', '.join(tips)}, or a lower --lr if the training loss is not falling")


def finish(p: Prepared, trained: nn.Module, train_criterion, criterion, device, run_dir: Path, best_accuracy: float,
           features: FeatureStore) -> dict:
    """Phase 3: the model to keep and its temperature, each fitted on photos the scored model never learned from;
    then the test score, once.

    A head on pooled features: the temperature comes from cross-fitting (every train and val photo scored by a head
    trained the same way without it), and with a test split the kept head is trained again on train + val photos
    (the refit). Otherwise: the best epoch's weights, and a temperature fitted on the validation photos.
    """
    cfg = p.cfg
    summary = {"run_dir": str(run_dir), "checkpoint": str(run_dir / "best.pt"), "best_val_accuracy": best_accuracy,
               "photos": {"train": len(p.train_labels), "val": len(p.val_labels)}}
    # rank 0 wrote best.pt on its machine's disk; the other machines may not see the run folder
    best = distributed.from_main(lambda: load_checkpoint(run_dir / "best.pt"))
    refitting = cfg.refit and p.pooled and p.data.test is not None  # afterwards no validation photo is unseen
    if p.pooled:
        labels = torch.cat([p.train_labels, p.val_labels.to(p.train_labels.device)])
        joined = {}

        def inputs_of(epoch: int) -> torch.Tensor:  # the train and val photos' features of the epoch's view
            v = epoch % cfg.augment_views
            if v not in joined:
                joined[v] = torch.cat([p.train_views[v][:], p.val_views[v][:]])
            return joined[v]

        scored_views = [inputs_of(v) for v in ((0, 1) if cfg.flip_tta else (0,))]
        fitted = calibration.fit_temperature(*cross_fitted_logits(
            p.trainable, trained, p.initial_head, inputs_of, scored_views, labels, train_criterion, cfg, device),
            source="cross-fitted")
        p.trainable.load_state_dict(p.initial_head)
        if refitting:  # 10% more photos to learn from: about +0.7% on the breeds
            refit(trained, inputs_of, labels, train_criterion, cfg, device)
            best.update(model_state=p.model.state_dict(), refit=True)
    if not refitting:
        best.pop("refit", None)
        p.model.load_state_dict(best["model_state"])
        if not p.pooled:
            fitted = calibration.fit_temperature(*p.scored(p.val_images, p.val_views, p.val_labels, criterion, device))
    fitted = distributed.gather(fitted)[0]  # rank 0's T goes to every rank, so all agree to the last bit
    log(calibration.describe(fitted))
    summary["calibration"], summary["refit"] = fitted, refitting
    best["temperature"] = fitted["temperature"]
    if distributed.is_main():  # atomic again: a crash leaves best.pt as it was, without a temperature
        save_checkpoint(best, run_dir / "best.pt")
    warn_if_at_chance(p, best_accuracy, "at the end")
    if p.data.test is not None:
        scores = test_scores(p, criterion, device, fitted["temperature"], features)
        summary["photos"]["test"] = scores.pop("photos")
        summary.update(scores)
    summary["skipped"] = [{"path": path, "reason": reason} for path, reason in p.skipped]
    if p.skipped:
        log(f"warning: {len(p.skipped)} unreadable photo(s) were skipped (listed above); --strict-images stops "
            "at the first instead")
    if distributed.is_main():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_curves(run_dir)  # loss and accuracy per epoch, for people to see the learning
    return summary


def test_scores(p: Prepared, criterion, device, temperature: float, features: FeatureStore) -> dict:
    """Accuracy, mean per-class accuracy and calibration error of the kept model on the test photos."""
    cfg = p.cfg
    images, labels = decode_split(p.data.test, p.prep, cfg, p.skipped)
    views = Views(p.frozen_fast, images, p.prep, "test", 1, cfg.flip_tta, cfg.seed, device, features,
                  images.path.stem) \
        if p.frozen_fast is not None else None
    logits, labels = p.scored(images, views, labels, criterion, device)
    ece = expected_calibration_error((logits.double() / temperature).softmax(1), labels)
    return {"photos": len(labels), "test_accuracy": (logits.argmax(1) == labels).float().mean().item(),
            "test_mean_class_accuracy": mean_class_accuracy(logits, labels), "test_ece": ece}
