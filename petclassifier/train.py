"""The training loop: forward propagation, loss, backpropagation by autograd, a gradient step; repeated for epochs.

Fast path for transfer learning: the frozen first stages of a pretrained body compute their features once
(for a few augmented views of every photo), and the loop trains only the last stages and the head on them.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from . import calibration, distributed
from .cache import decode_split, warn_unreadable
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import PetData, load_data
from .frozen import fits_on_gpu, frozen_features, is_global_pool, to_float
from .metrics import mean_class_accuracy
from .models import build_model, fold_batchnorm
from .plots import write_curves
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
from .runtime import autocast, log, progress, resolve_device
from .store import Batches, FeatureStore
from .transforms import Preprocessing


def train_one_epoch(model, loader, prepare, criterion, optimizer, scheduler, device, desc="train", totals=None,
                    on_step=None) -> float:
    """One pass over the training batches; returns the mean training loss (of this rank's photos).

    `totals` (the epoch's running loss sum and photo count) carries a resumed epoch on; `on_step(totals)` runs
    after every complete gradient step, when weights, optimizer and totals agree, to save or stop there.
    """
    model.train()
    totals = {"loss_sum": 0.0, "seen": 0} if totals is None else totals
    bar = progress(loader, desc=desc, unit="batch", leave=False)
    for x, y in bar:
        x, y = prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast(device):
            logits = model(x)  # forward propagation: [B, num_classes]
            loss = criterion(logits, y)
        value = loss.item()
        if distributed.any_rank(not math.isfinite(value)):  # stop before a bad step spoils the weights
            raise FloatingPointError(f"training loss became {value}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # backpropagation: autograd fills every parameter's .grad with d(loss)/d(parameter)
        optimizer.step()  # gradient descent: move each parameter a small step against its gradient
        scheduler.step()
        totals["loss_sum"] += value * len(y)
        totals["seen"] += len(y)
        bar.set_postfix(loss=f"{totals['loss_sum'] / totals['seen']:.3f}")
        if on_step is not None:
            on_step(totals)
    return totals["loss_sum"] / max(totals["seen"], 1)


@torch.inference_mode()
def evaluate(model, loader, prepare, criterion, device) -> dict:
    """Loss, accuracy and the logits [N, num_classes] over a whole split."""
    model.eval()
    total_loss, logits, labels = 0.0, [], []
    for x, y in loader:
        x, y = prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast(device):
            out = model(x).float()
        total_loss += criterion(out, y).item() * len(y)
        logits.append(out.cpu())
        labels.append(y.cpu())
    logits, labels = torch.cat(logits), torch.cat(labels)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return {"loss": total_loss / len(labels), "accuracy": accuracy, "logits": logits, "labels": labels}


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def optimizer_and_schedule(trained: nn.Module, labels: torch.Tensor, cfg: TrainConfig):
    """AdamW over `trained`'s parameters, its warm-up and cosine schedule over cfg.epochs, and the batches per epoch
    (counted on the labels alone: no view of the photos is computed for it)."""
    optimizer = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(distributed.ShardedBatches(labels, labels, cfg.batch_size, cfg.seed))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch))
    return optimizer, scheduler, steps_per_epoch


def run_dir_for(cfg: TrainConfig) -> Path:
    """--out, or runs/<date-time>-<model>-<task> (a folder dataset's run is named after the folder)."""
    if cfg.out:
        return Path(cfg.out)
    what = Path(cfg.data_dir).name if cfg.dataset == "folder" else cfg.task
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.model}-{what}"


def describe(data: PetData) -> str:
    counts = Counter(data.train.labels)
    per_class = ", ".join(f"{name} {counts[i]}" for i, name in enumerate(data.class_names))
    n_test = len(data.test.paths) if data.test else 0
    return (f"{len(data.class_names)} classes; {len(data.train.paths)} train / {len(data.val.paths)} val / "
            f"{n_test} test photos\ntrain photos per class: {per_class}")


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced set gets weight 1 everywhere (for --balance)."""
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).float()
    return len(labels) / (num_classes * counts)


def fit(cfg: TrainConfig) -> dict:
    """Train a model as the config says; returns the run's summary (accuracies, checkpoint path).

    Under torchrun every process runs this: each trains on its share of every batch and rank 0 writes the files.
    """
    cfg = (resume_config(cfg) if cfg.resume else cfg).resolved()
    device, created = distributed.setup(resolve_device(cfg.device))
    try:
        with deterministic_mode(cfg.deterministic), FeatureStore(Path(cfg.cache_dir) / "features") as features:
            return run(cfg, device, features)
    finally:
        distributed.teardown(created)


def run(cfg: TrainConfig, device: torch.device, features: FeatureStore) -> dict:
    """The body of `fit` on one process (one rank) with its device chosen."""
    run_started = time.perf_counter()
    rank, world = distributed.rank(), distributed.world_size()
    torch.manual_seed(cfg.seed)
    data = distributed.per_machine(lambda: load_data(cfg))  # each machine's first process checks the photos
    warn_unreadable(data.skipped)
    log(describe(data))
    prep = Preprocessing.for_model(cfg.model, cfg.image_size)
    # a pretrained model keeps its ImageNet classifier beside the new head: it says when a photo shows no pet
    imagenet_stages = cfg.trainable_stages if cfg.pretrained and cfg.trainable_stages >= 0 else None
    model = build_model(cfg.model, len(data.class_names), cfg.pretrained, imagenet_stages)
    model = model.to(device, memory_format=torch.channels_last)
    frozen, trainable = model.split(cfg.trainable_stages)
    frozen.requires_grad_(False)

    skipped = list(data.skipped)
    train_images, train_labels = decode_split(data.train, prep, cfg, skipped)
    val_images, val_labels = decode_split(data.val, prep, cfg, skipped)
    if device.type == "cuda" and fits_on_gpu(train_images, val_images):  # whole epochs then run from GPU memory
        train_images, train_labels, val_images = train_images.load().to(device), train_labels.to(device), \
            val_images.load().to(device)
    # Dropout masks: the same whether the photos were decoded or came from the cache (decoding draws from
    # torch's generator), and each rank its own, after the same initial weights everywhere.
    torch.manual_seed(cfg.seed + rank)
    generator = torch.Generator().manual_seed(cfg.seed)
    augment = torch.Generator().manual_seed(cfg.seed + rank)  # each rank its own crops and flips
    views, pooled = [], False  # fast path: the frozen stages' features of each view of the training photos, once
    if len(frozen):  # the frozen stages run once per view, not once per epoch
        frozen_fast = fold_batchnorm(copy.deepcopy(frozen).eval())  # same function, fewer memory passes
        pooled = cfg.trainable_stages == 0 and is_global_pool(model.head[0])
        if pooled:  # the head averages the maps away first:
            frozen_fast = nn.Sequential(frozen_fast, model.head[0])  # keep [C, 1, 1] per photo, not [C, h, w]
        val_inputs = frozen_features(frozen_fast, val_images, prep.eval_batch, device, "frozen features (val)",
                                     features)
        train_prepare = eval_prepare = to_float
    else:
        val_inputs = val_images
        train_prepare, eval_prepare = lambda x: prep.train_batch(x, augment), prep.eval_batch

    # the head alone learns, from pooled features: training it again on train + val photos takes seconds. Only
    # where a test split remains to measure the result: afterwards no validation photo is unseen.
    refitting = cfg.refit and pooled and data.test is not None
    initial_head = copy.deepcopy(trainable.state_dict()) if refitting else None

    def view_transform(v: int):
        """View 0 is the plain centre crop, the others random crops and flips, all drawn from one generator."""
        return prep.eval_batch if v == 0 else lambda x: prep.train_batch(x, generator)

    def train_view(epoch: int) -> torch.Tensor:
        """The frozen features epoch `epoch` trains on: view 0 is the plain centre crop, the others random crops
        and flips. Each is computed when first needed, so the first epoch starts early; always in order and from
        one generator, so the views are the same whatever epoch a run resumes at and however many ranks share it
        (every rank needs every photo: the shuffled shares change each epoch)."""
        while len(views) <= epoch % cfg.augment_views:
            v = len(views)
            views.append(frozen_features(frozen_fast, train_images, view_transform(v), device,
                                         f"frozen features (train, view {v + 1}/{cfg.augment_views})", features))
        return views[epoch % cfg.augment_views]

    def train_loader(epoch: int, start: int = 0) -> distributed.ShardedBatches:
        inputs = train_view(epoch) if len(frozen) else train_images
        batches = distributed.ShardedBatches(inputs, train_labels, cfg.batch_size, cfg.seed)
        batches.set_position(epoch, start)
        return batches

    # each rank evaluates every world-th photo; the sums are reduced across ranks
    val_loader = Batches(val_inputs, val_labels, cfg.batch_size * 2, rank, world)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    train_criterion = criterion
    if cfg.balance:  # validation keeps the plain loss, so epochs stay comparable with and without --balance
        weights = class_weights(train_labels, len(data.class_names)).to(device)
        train_criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    optimizer, scheduler, steps_per_epoch = optimizer_and_schedule(trainable, train_labels, cfg)
    trained = distributed.wrap(trainable, device)
    if cfg.compile:
        trained = torch.compile(trained)

    run_dir = Path(distributed.gather(str(run_dir_for(cfg)))[0])  # rank 0's name, in case the clock ticked
    last, metrics_file = run_dir / "last.pt", run_dir / "metrics.jsonl"
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
    meta = {"model_name": cfg.model, "class_names": data.class_names, "task": cfg.task,
            "species_of": data.species_of, "preprocessing": prep.as_dict(), "config": asdict(cfg),
            "imagenet_stages": imagenet_stages, "flip_tta": cfg.flip_tta}
    start_epoch, start_step, best_accuracy, totals, epoch_lr = 0, 0, -1.0, None, None
    if cfg.resume:
        ckpt = resume_from(cfg.resume, model, optimizer, scheduler, meta)
        start_epoch, start_step, best_accuracy = ckpt["epoch"], ckpt["step"], ckpt["best_accuracy"]
        mine = rank_state(ckpt, start_step)
        set_rng_state(mine["rng"], augment, device)
        if start_step:
            totals, epoch_lr = dict(mine["totals"]), ckpt["epoch_lr"]
        if distributed.is_main() and metrics_file.exists():  # rows after the checkpoint are redone below
            rows = [line for line in metrics_file.read_text().splitlines()
                    if line.strip() and json.loads(line)["epoch"] <= start_epoch]
            metrics_file.write_text("".join(row + "\n" for row in rows))
        log(f"resumed from {cfg.resume} {describe_position(start_epoch, start_step)}")
        if cfg.epochs != ckpt["config"]["epochs"]:
            log(f"--epochs {cfg.epochs}: the learning-rate schedule is stretched from the run's "
                f"{ckpt['config']['epochs']} epochs to {cfg.epochs}")
    log(f"training {cfg.model} ({sum(p.numel() for p in trainable.parameters()):,} trainable parameters) on "
        f"{device}{f' x {world} processes' if world > 1 else ''} for {plural(cfg.epochs, 'epoch')}; "
        f"run folder {run_dir}")

    def save_last(epoch: int, step: int, totals: dict, metrics: dict | None) -> None:
        """last.pt: all it takes to go on exactly after `step` batches of epoch `epoch` (0-based); rank 0 writes."""
        ranks = distributed.gather({"rng": rng_state(augment, device), "totals": dict(totals)})
        if distributed.is_main():
            save_checkpoint({**meta, "model_state": model.state_dict(), "metrics": metrics, "epoch": epoch,
                             "step": step, "epoch_lr": epoch_lr, "best_accuracy": best_accuracy,
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "ranks": ranks}, last)

    def stop_here(epoch: int, step: int) -> None:
        log(f"interrupted: saved {last} {describe_position(epoch, step)}; continue with --resume {run_dir}")
        raise KeyboardInterrupt

    position = {"epoch": start_epoch, "step": start_step}

    def on_step(totals: dict) -> None:
        position["step"] += 1
        epoch, step = position["epoch"], position["step"]
        stopping = distributed.any_rank(stop.requested)
        if stopping or (cfg.save_every and (epoch * steps_per_epoch + step) % cfg.save_every == 0
                        and step < steps_per_epoch):  # the epoch's own save follows its last step
            save_last(epoch, step, totals, None)
        if stopping:
            stop_here(epoch, step)

    with StopRequest() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            skip, start_step = start_step, 0
            position.update(epoch=epoch, step=skip)
            if not skip:
                totals, epoch_lr = {"loss_sum": 0.0, "seen": 0}, optimizer.param_groups[0]["lr"]
            try:
                train_one_epoch(trained, train_loader(epoch, skip), train_prepare, train_criterion, optimizer,
                                scheduler, device, desc=f"epoch {epoch + 1}/{cfg.epochs}", totals=totals,
                                on_step=on_step)
            except FloatingPointError as e:
                kept = f"; {last} holds the last good state" if last.is_file() else ""
                raise FloatingPointError(f"{e}{kept}") from None
            loss_sum, seen = distributed.sum_over_ranks([totals["loss_sum"], totals["seen"]])
            train_loss = loss_sum / max(seen, 1)
            val_result = evaluate(trainable, val_loader, eval_prepare, criterion, device)
            val_loss, val_accuracy = distributed.reduced(val_result)
            row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5),
                   "val_accuracy": round(val_accuracy, 5), "lr": epoch_lr,
                   "seconds": round(time.perf_counter() - started, 2),
                   "elapsed": round(time.perf_counter() - run_started, 1),  # since the run started, setup included
                   "time": round(time.time(), 2)}  # the wall clock (Unix seconds): lines runs up with each other
            log(f"epoch {row['epoch']:3d}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                f"val acc {val_accuracy:.1%}  {row['seconds']:.1f}s")
            if distributed.is_main():
                with open(metrics_file, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if val_accuracy > best_accuracy:
                best_accuracy = val_accuracy
                if distributed.is_main():
                    save_checkpoint({**meta, "model_state": model.state_dict(), "metrics": row}, run_dir / "best.pt")
            save_last(epoch + 1, 0, totals, row)
            if distributed.any_rank(stop.requested) and epoch + 1 < cfg.epochs:
                stop_here(epoch + 1, 0)

    summary = {"run_dir": str(run_dir), "checkpoint": str(run_dir / "best.pt"), "best_val_accuracy": best_accuracy,
               "photos": {"train": len(train_labels), "val": len(val_labels)}}
    # rank 0 wrote best.pt on its machine's disk; the other machines may not see the run folder
    best = distributed.from_main(lambda: load_checkpoint(run_dir / "best.pt"))
    model.load_state_dict(best["model_state"])

    def split_logits(images, inputs, labels: torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of a split, every rank's share; with --flip-tta averaged with the mirror images'."""
        passes = [(inputs, eval_prepare)]
        if cfg.flip_tta:
            def mirror(x):
                return prep.eval_batch(x).flip(-1)
            passes.append((frozen_features(frozen_fast, images, mirror, device, f"frozen features ({split}, mirrored)",
                                          features), to_float) if len(frozen) else (images, mirror))
        scored = [distributed.gathered(evaluate(trainable, Batches(rows, labels, cfg.batch_size * 2, rank, world),
                                                prepare, criterion, device)) for rows, prepare in passes]
        return torch.stack([logits for logits, _ in scored]).mean(0), scored[0][1]

    # fitted on all ranks' validation logits; rank 0's T goes to every rank, so all agree to the last bit
    fitted = distributed.gather(calibration.fit_temperature(*split_logits(val_images, val_inputs, val_labels,
                                                                          "val")))[0]
    log(calibration.describe(fitted))
    summary["calibration"], summary["refit"] = fitted, initial_head is not None
    best["temperature"] = fitted["temperature"]
    if initial_head is not None:  # 10% more photos to learn from: about +0.7% on the breeds
        val_views = [val_inputs] + [frozen_features(frozen_fast, val_images, view_transform(v), device,
                                                    f"frozen features (val, view {v + 1}/{cfg.augment_views})",
                                                    features) for v in range(1, min(cfg.augment_views, cfg.epochs))]
        trainable.load_state_dict(initial_head)
        refit(trained, lambda epoch: torch.cat([train_view(epoch)[:], val_views[epoch % cfg.augment_views][:]]),
              torch.cat([train_labels, val_labels.to(train_labels.device)]), train_criterion, cfg, device)
        best.update(model_state=model.state_dict(), refit=True)
    if distributed.is_main():  # atomic again: a crash leaves best.pt as it was, without a temperature
        save_checkpoint(best, run_dir / "best.pt")
    if data.test is not None:
        test_images, test_labels = decode_split(data.test, prep, cfg, skipped)
        summary["photos"]["test"] = len(test_labels)
        test_inputs = test_images
        if len(frozen):
            test_inputs = frozen_features(frozen_fast, test_images, prep.eval_batch, device, "frozen features (test)",
                                          features)
        logits, labels = split_logits(test_images, test_inputs, test_labels, "test")
        summary["test_accuracy"] = (logits.argmax(1) == labels).float().mean().item()
        summary["test_mean_class_accuracy"] = mean_class_accuracy(logits, labels)
    summary["skipped"] = [{"path": path, "reason": reason} for path, reason in skipped]
    if skipped:
        log(f"warning: {len(skipped)} unreadable photo(s) were skipped (listed above); --strict-images stops "
            "at the first instead")
    if distributed.is_main():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_curves(run_dir)  # loss and accuracy per epoch, for people to see the learning
    split_name, accuracy = ("test", summary["test_accuracy"]) if "test_accuracy" in summary else ("val", best_accuracy)
    log(f"{split_name} accuracy {accuracy:.1%}; checkpoint {summary['checkpoint']}")
    return summary


def refit(trained: nn.Module, inputs_of, labels: torch.Tensor, criterion, cfg: TrainConfig, device) -> None:
    """Train `trained` (back at its initial weights) for the run's epochs on all labelled photos: `inputs_of(epoch)`
    [N, ...] with `labels` [N]. The epoch count and the temperature were chosen on the validation photos, which are
    now among the training photos: that is why those choices come first."""
    log("refit: training the head again on the train and validation photos together")
    optimizer, scheduler, _ = optimizer_and_schedule(trained, labels, cfg)
    for epoch in range(cfg.epochs):
        batches = distributed.ShardedBatches(inputs_of(epoch), labels, cfg.batch_size, cfg.seed)
        batches.set_position(epoch, 0)
        loss = train_one_epoch(trained, batches, to_float, criterion, optimizer, scheduler, device,
                               desc=f"refit {epoch + 1}/{cfg.epochs}")
    log(f"refit: {plural(cfg.epochs, 'epoch')} on {len(labels):,} photos, final train loss {loss:.4f}")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def train(**overrides) -> dict:
    """Python API: `train(epochs=3, model="smallcnn")` takes the same fields as the CLI flags."""
    return fit(replace(TrainConfig(), **overrides))
