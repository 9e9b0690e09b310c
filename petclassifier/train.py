"""The training loop: forward propagation, loss, backpropagation by autograd, a gradient step; repeated for epochs.

Fast path for transfer learning: the frozen first stages of a pretrained body compute their features once
(for a few augmented views of every photo), and the loop trains only the last stages and the head on them.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import PetData, Split, decode_images, load_data
from .errors import UserError
from .models import build_model
from .plots import write_curves
from .transforms import Preprocessing


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


def train_one_epoch(model, loader, prepare, criterion, optimizer, scheduler, device, desc="train") -> float:
    """One pass over the training batches; returns the mean training loss."""
    model.train()
    total_loss, seen = 0.0, 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False)
    for x, y in bar:
        x, y = prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast(device):
            logits = model(x)  # forward propagation: [B, num_classes]
            loss = criterion(logits, y)
        if not math.isfinite(loss.item()):  # stop before a bad step spoils the weights
            raise FloatingPointError(f"training loss became {loss.item()}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # backpropagation: autograd fills every parameter's .grad with d(loss)/d(parameter)
        optimizer.step()  # gradient descent: move each parameter a small step against its gradient
        scheduler.step()
        total_loss += loss.item() * len(y)
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}")
    return total_loss / max(seen, 1)


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


@torch.inference_mode()
def frozen_features(frozen: nn.Module, images: torch.Tensor, prep: Preprocessing, views: int,
                    generator: torch.Generator, device: torch.device, batch_size: int, desc: str) -> torch.Tensor:
    """Outputs of the frozen stages for `views` versions of every photo: [views, N, C, h, w].

    View 0 is the plain centre crop; the others are random augmentations, so the trained stages still see
    a different crop and flip of each photo from epoch to epoch.
    """
    frozen.eval()
    out = []
    bar = tqdm(total=views * len(images), desc=desc, unit="img", leave=False)
    for v in range(views):
        chunks = []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            x = prep.eval_batch(x) if v == 0 else prep.train_batch(x, generator)
            with autocast(device):
                chunks.append(frozen(x).float().cpu())
            bar.update(len(x))
        out.append(torch.cat(chunks))
    bar.close()
    return torch.stack(out)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def run_dir_for(cfg: TrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.model}-{cfg.task}"


def describe(data: PetData) -> str:
    counts = Counter(data.train.labels)
    per_class = ", ".join(f"{name} {counts[i]}" for i, name in enumerate(data.class_names))
    n_test = len(data.test.paths) if data.test else 0
    return (f"{len(data.class_names)} classes; {len(data.train.paths)} train / {len(data.val.paths)} val / "
            f"{n_test} test photos\ntrain photos per class: {per_class}")


def decode_split(split: Split, prep: Preprocessing, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's photos as a uint8 tensor and its labels, leaving out (and reporting) unreadable files."""
    images, bad = decode_images(split.paths, prep, cfg.cache_dir, cfg.workers)
    for path, reason in bad:
        print(f"warning: skipped unreadable photo {path}: {reason}")
    bad_paths = {p for p, _ in bad}
    labels = torch.tensor([y for p, y in zip(split.paths, split.labels) if p not in bad_paths])
    return images, labels


def fit(cfg: TrainConfig) -> dict:
    """Train a model as the config says; returns the run's summary (accuracies, checkpoint path)."""
    cfg = cfg.resolved()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    print(describe(data))
    prep = Preprocessing.for_model(cfg.model, cfg.image_size)
    model = build_model(cfg.model, len(data.class_names), cfg.pretrained).to(device, memory_format=torch.channels_last)
    frozen, trainable = model.split(cfg.trainable_stages)
    frozen.requires_grad_(False)

    train_images, train_labels = decode_split(data.train, prep, cfg)
    val_images, val_labels = decode_split(data.val, prep, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    if len(frozen):  # fast path: the frozen stages run once, not once per epoch
        views = frozen_features(frozen, train_images, prep, cfg.augment_views, generator, device, cfg.batch_size,
                                "features of frozen stages (train)")
        val_inputs = frozen_features(frozen, val_images, prep, 1, generator, device, cfg.batch_size, "(val)")[0]
        train_prepare = eval_prepare = nn.Identity()
    else:
        views = None
        val_inputs = val_images
        train_prepare, eval_prepare = lambda x: prep.train_batch(x, generator), prep.eval_batch

    def train_loader(epoch: int) -> DataLoader:
        inputs = train_images if views is None else views[epoch % len(views)]
        return DataLoader(TensorDataset(inputs, train_labels), batch_size=cfg.batch_size, shuffle=True,
                          generator=generator, drop_last=len(train_labels) > cfg.batch_size)

    val_loader = DataLoader(TensorDataset(val_inputs, val_labels), batch_size=cfg.batch_size * 2)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader(0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch))

    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    meta = {"model_name": cfg.model, "class_names": data.class_names, "task": cfg.task,
            "species_of": data.species_of, "preprocessing": prep.as_dict(), "config": asdict(cfg)}
    start_epoch, best_accuracy = 0, -1.0
    if cfg.resume:
        start_epoch, best_accuracy = resume_from(cfg.resume, model, optimizer, scheduler, generator, meta)
        print(f"resumed from {cfg.resume} after epoch {start_epoch}")
    print(f"training {cfg.model} ({sum(p.numel() for p in trainable.parameters()):,} trainable parameters) on "
          f"{device} for {cfg.epochs} epochs; run folder {run_dir}")

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(trainable, train_loader(epoch), train_prepare, criterion, optimizer, scheduler,
                                     device, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        val = evaluate(trainable, val_loader, eval_prepare, criterion, device)
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "val_loss": round(val["loss"], 5),
               "val_accuracy": round(val["accuracy"], 5), "lr": lr, "seconds": round(time.perf_counter() - started, 2)}
        print(f"epoch {row['epoch']:3d}  train loss {train_loss:.4f}  val loss {val['loss']:.4f}  "
              f"val acc {val['accuracy']:.1%}  {row['seconds']:.1f}s")
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if val["accuracy"] > best_accuracy:
            best_accuracy = val["accuracy"]
            save_checkpoint({**meta, "model_state": model.state_dict(), "metrics": row}, run_dir / "best.pt")
        save_checkpoint({**meta, "model_state": model.state_dict(), "metrics": row, "epoch": epoch + 1,
                         "best_accuracy": best_accuracy, "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "rng": rng_state(generator)}, run_dir / "last.pt")

    summary = {"run_dir": str(run_dir), "checkpoint": str(run_dir / "best.pt"), "best_val_accuracy": best_accuracy}
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model_state"])
    if data.test is not None:
        test_images, test_labels = decode_split(data.test, prep, cfg)
        test_inputs = test_images
        if len(frozen):
            test_inputs = frozen_features(frozen, test_images, prep, 1, generator, device, cfg.batch_size, "(test)")[0]
        test_loader = DataLoader(TensorDataset(test_inputs, test_labels), batch_size=cfg.batch_size * 2)
        summary["test_accuracy"] = evaluate(trainable, test_loader, eval_prepare, criterion, device)["accuracy"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_curves(run_dir)  # loss and accuracy per epoch, for people to see the learning
    split_name, accuracy = ("test", summary["test_accuracy"]) if "test_accuracy" in summary else ("val", best_accuracy)
    print(f"{split_name} accuracy {accuracy:.1%}; checkpoint {summary['checkpoint']}")
    return summary


def rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "generator": generator.get_state()}


def resume_from(path, model, optimizer, scheduler, generator, meta) -> tuple[int, float]:
    """Load a last.pt into the live objects; returns (epochs done, best validation accuracy)."""
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt:
        raise UserError(f"{path} holds no training state; resume from a last.pt")
    if ckpt["class_names"] != meta["class_names"] or ckpt["model_name"] != meta["model_name"]:
        raise UserError(f"{path} was trained with another model or class list than this run")
    model.load_state_dict(ckpt["model_state"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    generator.set_state(ckpt["rng"]["generator"])
    return ckpt["epoch"], ckpt["best_accuracy"]


def train(**overrides) -> dict:
    """Python API: `train(epochs=3, model="smallcnn")` takes the same fields as the CLI flags."""
    return fit(replace(TrainConfig(), **overrides))
