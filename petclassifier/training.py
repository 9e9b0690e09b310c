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
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from . import calibration, distributed
from .backends import CALIBRATION_PHOTOS, on_backend, resolve_backend
from .cache import decode_split, warn_unreadable
from .checkpoint import checkpoint_file, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import PetData, load_data
from .epochs import train_epochs, warn_if_at_chance
from .errors import SavedAndStopped
from .frozen import Views, fast_frozen, fits_on_gpu, is_global_pool, to_float
from .kinds import KindInputs
from .loop import evaluate
from .metrics import confusion_matrix, expected_calibration_error, mean_class_accuracy
from .models import build_model, check_model_name
from .plots import write_curves
from .refit import cross_fitted_logits, refit
from .resilience import describe_position, deterministic_mode, resume_config
from .runtime import duration, log, plural, resolve_device
from .store import Batches, FeatureStore
from .transforms import Preprocessing


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


@dataclass
class Prepared:
    """What the epochs and the finish work on: the photos, the model and its parts, and how inputs reach it."""

    cfg: TrainConfig
    data: PetData
    prep: Preprocessing
    model: nn.Module
    trainable: nn.Module  # the stages that learn, and the head (KindInputs: a pooled head reading kinds)
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
    joined: dict = field(default_factory=dict)  # view -> train and val features joined, for the finish

    @property
    def rows_of(self):
        """What turns a view's features into the rows the learning layers read, once: None where they read them."""
        return self.trainable.rows if isinstance(self.trainable, KindInputs) else None

    def joined_inputs(self, epoch: int) -> torch.Tensor:
        """The train and val photos' features of epoch `epoch`'s view, joined (kept: the finish reads each often)."""
        v = epoch % self.cfg.augment_views
        if v not in self.joined:
            self.joined[v] = torch.cat([self.train_views[v][:], self.val_views[v][:]])
        return self.joined[v]

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
                passes.append((images, self.prep.mirrored_batch))
        rank, world = distributed.rank(), distributed.world_size()
        scored = [distributed.gathered(evaluate(self.trainable, Batches(rows, labels, self.cfg.batch_size * 2, rank,
                                                                        world), prepare, criterion, device))
                  for rows, prepare in passes]
        return torch.stack([logits for logits, _ in scored]).mean(0), scored[0][1]


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
    if pooled and model.kind_features() is not None:  # the kinds computed once per view, not at every step
        trainable = KindInputs(model.head)
    p = Prepared(cfg, data, prep, model, trainable, None, pooled, train_images, train_labels, val_images,
                 val_labels, skipped, copy.deepcopy(trainable.state_dict()) if pooled else None)
    if len(frozen):  # the frozen stages run once per view, not once per epoch
        p.frozen_fast = on_backend(fast_frozen(frozen, model.head[0] if pooled else None), cfg.backend, prep.crop,
                                   cfg.cache_dir, lambda: calibration_batches(train_images, prep, cfg.seed))
        p.cfg = cfg = replace(cfg, backend=p.frozen_fast.backend)  # int8 that failed its check runs float32
        splits = (("train", train_images), ("val", val_images))
        p.train_views, p.val_views = (
            Views(p.frozen_fast, images, prep, name, cfg.augment_views, cfg.flip_tta, cfg.seed + i, device, features,
                  photos[i], p.rows_of) for i, (name, images) in enumerate(splits))
    return p


def calibration_batches(images, prep: Preprocessing, seed: int, batch_size: int = 8):
    """Centre crops of up to CALIBRATION_PHOTOS training photos drawn at random: what sets int8's ranges."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:CALIBRATION_PHOTOS]
    for i in range(0, len(order), batch_size):
        yield prep.eval_batch(images[order[i : i + batch_size].sort().values].cpu())


def finish(p: Prepared, trained: nn.Module, train_criterion, criterion, device, run_dir: Path, best_accuracy: float,
           features: FeatureStore) -> dict:
    """Phase 3: the model to keep and its temperature, fitted for that model on photos it never learned from; then
    the test score, once.

    A head on pooled features (refit, the default): the kept head is trained again on train + val photos for the
    run's epochs, and its temperature comes from cross-fitting (every photo scored by a head trained the same way
    without it). Otherwise (--no-refit, or layers of the body learn): the best epoch's weights, and a temperature
    fitted on the validation photos that model never learned from.
    """
    cfg = p.cfg
    summary = {"run_dir": str(run_dir), "checkpoint": str(run_dir / "best.pt"), "best_val_accuracy": best_accuracy,
               "photos": {"train": len(p.train_labels), "val": len(p.val_labels)}}
    # rank 0 wrote best.pt on its machine's disk; the other machines may not see the run folder
    best = distributed.from_main(lambda: load_checkpoint(run_dir / "best.pt"))
    refitting = cfg.refit and p.pooled
    if refitting:
        fitted, cross_fitted = refit_pooled_head(p, trained, train_criterion, cfg, device)
        summary.update(cross_fitted)
        best.update(model_state=p.model.state_dict(), refit=True)
    else:
        best.pop("refit", None)
        p.model.load_state_dict(best["model_state"])
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
    summary["best_epoch"] = best["metrics"]["epoch"] if best.get("metrics") else None
    return summary


def refit_pooled_head(p: Prepared, trained: nn.Module, train_criterion, cfg: TrainConfig, device) -> tuple:
    """The head trained again from its initial weights on every train and val photo, as each cross-fitted head was
    on 4/5 of them; returns the temperature fitted on the cross-fitted scores, and their accuracy and confusions."""
    labels, inputs_of = torch.cat([p.train_labels, p.val_labels.to(p.train_labels.device)]), p.joined_inputs
    scored_views = [inputs_of(v) for v in ((0, 1) if cfg.flip_tta else (0,))]
    logits, scored = cross_fitted_logits(p.trainable, trained, p.initial_head, inputs_of, scored_views, labels,
                                         train_criterion, cfg, device)  # scored: labels in the folds' order
    predicted = logits.argmax(1)
    p.trainable.load_state_dict(p.initial_head)
    refit(trained, inputs_of, labels, train_criterion, cfg, device)  # 10% more photos: +1.2 points on the breeds
    # every photo scored by a head that never learned from it: what the kept head does on new photos
    return calibration.fit_temperature(logits, scored, source="cross-fitted"), {
        "cross_fitted_accuracy": (predicted == scored).float().mean().item(),
        "cross_fitted_confusion": confusion_matrix(scored.cpu(), predicted.cpu(), len(p.data.class_names)).tolist()}


def test_scores(p: Prepared, criterion, device, temperature: float, features: FeatureStore) -> dict:
    """Accuracy, mean per-class accuracy and calibration error of the kept model on the test photos."""
    cfg = p.cfg
    images, labels = decode_split(p.data.test, p.prep, cfg, p.skipped)
    views = Views(p.frozen_fast, images, p.prep, "test", 1, cfg.flip_tta, cfg.seed, device, features,
                  images.path.stem, p.rows_of) if p.frozen_fast is not None else None
    logits, labels = p.scored(images, views, labels, criterion, device)
    ece = expected_calibration_error((logits.double() / temperature).softmax(1), labels)
    return {"photos": len(labels), "test_accuracy": (logits.argmax(1) == labels).float().mean().item(),
            "test_mean_class_accuracy": mean_class_accuracy(logits, labels), "test_ece": ece}
