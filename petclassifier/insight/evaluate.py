"""Evaluate a checkpoint on a dataset split: top-1/top-5, mean per-class accuracy, precision/recall, confusions,
and how well its probabilities are calibrated."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data.cache import decode_split, warn_unreadable
from ..data.datasets import load_split
from ..data.images import centre_crop
from ..data.store import Batches
from ..engine.loop import evaluate
from ..engine.metrics import at_chance, calibration_report, chance_accuracy, luck_ceiling, metrics_report
from ..errors import UserError
from ..models.checkpoint import flip_tta_of, load_checkpoint, model_from_checkpoint, temperature_of
from ..models.net import FlipAveraged
from ..runtime import inference_batch_size, resolve_device

SPLITS = ("train", "val", "test", "all")


def canonical(name: str) -> str:
    """Class names compare case-, separator- and plural-insensitively: 'Cats' matches 'cat', 'Great Pyrenees'."""
    name = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return name[:-1] if name.endswith("s") and not name.endswith("ss") and len(name) > 3 else name


def match_classes(model_classes: list[str], data_classes: list[str]) -> list[int]:
    """For each dataset class, the index of the model class of the same name; a UserError if any is unknown."""
    index = {canonical(n): i for i, n in enumerate(model_classes)}
    missing = [n for n in data_classes if canonical(n) not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(f"the checkpoint does not know {len(missing)} class(es) of this dataset ({shown}); "
                        f"it knows: {', '.join(model_classes[:8])}{' ...' if len(model_classes) > 8 else ''}")
    return [index[canonical(n)] for n in data_classes]


def species_groups(ckpt: dict, data_classes: list[str]) -> dict[str, list[int]] | None:
    """Species -> indices of its breeds, when the dataset's classes are the species of the model's breeds."""
    names, species_of = ckpt["class_names"], ckpt.get("species_of") or {}
    known = {canonical(n) for n in names}
    if all(canonical(n) in known for n in data_classes) or any(n not in species_of for n in names):
        return None
    if not {canonical(n) for n in data_classes} <= {canonical(s) for s in species_of.values()}:
        return None
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(species_of[name], []).append(i)
    return dict(sorted(groups.items()))


def eval_config(ckpt: dict, dataset=None, data_dir=None, task=None, cache_dir=None) -> TrainConfig:
    """The checkpoint's own data settings, with the given ones replacing them."""
    trained = TrainConfig.from_dict(ckpt.get("config", {}))
    given = {"dataset": dataset, "data_dir": data_dir, "task": task, "cache_dir": cache_dir}
    cfg = replace(trained, **{k: v for k, v in given.items() if v is not None})
    if dataset is not None and data_dir is None and dataset != trained.dataset:
        cfg = replace(cfg, data_dir=None)
    if task is None and "folder" in (cfg.dataset, trained.dataset):
        # a folder's classes are its sub-folders, and a folder model's task means nothing on Oxford (breed then)
        cfg = replace(cfg, task=None)
    return replace(cfg, download=False, resume=None).resolved()


def evaluate_checkpoint(checkpoint: str | Path, dataset=None, data_dir=None, task=None, split: str = "test",
                        cache_dir=None, device: str = "auto") -> dict:
    """Run a checkpoint over a split: the report, and the photos/labels/probabilities for pictures.

    A breed model scores a dataset of its breeds' species (cat/dog folders) through them: a species' probability
    is the sum of its breeds'.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose train, val, test or all")
    ckpt = load_checkpoint(checkpoint)
    model, prep = model_from_checkpoint(ckpt)
    cfg = eval_config(ckpt, dataset, data_dir, task, cache_dir)
    data = load_split(cfg, split)
    warn_unreadable(data.skipped)
    groups = species_groups(ckpt, data.class_names)
    class_names = list(groups) if groups else ckpt["class_names"]
    to_model = match_classes(class_names, data.class_names)
    images, labels = decode_split(data.photos, prep, cfg)
    if not len(labels):
        raise UserError(f"no readable photos in the {split} split")
    labels = torch.tensor(to_model, dtype=torch.long)[labels]
    dev = resolve_device(device)
    model = model.to(dev, memory_format=torch.channels_last)
    # with species the loss that evaluate reports is meaningless (labels are not breeds); only the logits are used
    loader = Batches(images, labels, batch_size=inference_batch_size(dev, flip_tta_of(ckpt)))
    scored = FlipAveraged(model) if flip_tta_of(ckpt) else model  # as predict scores them
    logits = evaluate(scored, loader, prep.eval_batch, nn.CrossEntropyLoss(), dev)["logits"]
    temperature = temperature_of(ckpt)
    # scored as predict scores them, with the temperature; without it only for the calibration before/after
    raw, scores = scored_logits(logits, groups), scored_logits(logits / temperature, groups)
    report = metrics_report(scores, labels, class_names)
    report.update(checkpoint=str(checkpoint), model=ckpt["model_name"], dataset=cfg.dataset, data_dir=cfg.data_dir,
                  task=cfg.task, split=split)
    if groups:
        report.update(scored_through="species", model_classes=len(ckpt["class_names"]))
    report["calibration"] = calibration_report(raw.softmax(1), scores.softmax(1), labels, temperature)
    report["chance_top1"] = chance_accuracy(labels, len(class_names))
    report["at_chance"] = at_chance(report["top1"], labels, len(class_names))
    report["luck_top1"] = luck_ceiling(labels, len(class_names))
    return {"report": report, "images": images, "labels": labels, "probs": scores.softmax(1), "crop": prep.crop}


def scored_logits(logits: torch.Tensor, groups: dict[str, list[int]] | None) -> torch.Tensor:
    """The model's logits, or with species `groups` each species' log of its breeds' summed probabilities."""
    if not groups:
        return logits
    log_probs = logits.log_softmax(1)  # log space: many near-zero breed probabilities add up without underflow
    return torch.stack([log_probs[:, i].logsumexp(1) for i in groups.values()], 1)


def confident_mistakes(probs: torch.Tensor, labels: torch.Tensor, count: int = 12) -> list[int]:
    """Indices of the wrong predictions made with the highest probability, most confident first."""
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    return wrong[confidence[wrong].argsort(descending=True)][:count].tolist()


def write_outputs(result: dict, out: str | Path | None, json_path: str | Path | None) -> list[Path]:
    """The JSON report and the confusion-matrix, reliability and mistakes pictures; returns the files written."""
    report, written = result["report"], []
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        written.append(Path(json_path))
    if out:
        from .plots import plot_confusion, plot_image_grid, plot_reliability

        names, split = report["class_names"], report["split"]
        title = f"Confusion matrix, {split} split ({report['photos']} photos, top-1 {report['top1']:.1%})"
        written.append(plot_confusion(torch.tensor(report["confusion_matrix"]), names, Path(out) / "confusion.png",
                                      title))
        written.append(plot_reliability(report["calibration"], Path(out) / "reliability.png",
                                        f"Reliability, {split} split ({report['photos']} photos)"))
        picks = confident_mistakes(result["probs"], result["labels"])
        if picks:
            probs, labels = result["probs"], result["labels"]
            captions = [f"true: {names[labels[i]]}\npredicted: {names[probs[i].argmax()]} {probs[i].max():.0%}"
                        for i in picks]
            images = [centre_crop(result["images"][i], result["crop"]) for i in picks]
            written.append(plot_image_grid(images, captions, Path(out) / "mistakes.png",
                                           f"Most confident mistakes ({split} split)"))
    return written


def summary_lines(report: dict) -> list[str]:
    """The headline numbers and the worst classes, for the terminal."""
    lines = []
    if report.get("scored_through") == "species":
        lines.append(f"scored through species: each photo's {' and '.join(report['class_names'])} probabilities are "
                     f"the sums over the checkpoint's {report['model_classes']} breeds")
    top5 = f"top-5 {report['top5']:.1%}  " if "top5" in report else ""
    lines.append(f"{report['split']} split, {report['photos']} photos: top-1 {report['top1']:.1%}  {top5}"
                 f"mean per-class accuracy {report['mean_per_class_accuracy']:.1%}")
    if report.get("at_chance"):
        lines.append(f"at chance: top-1 {report['top1']:.1%} is no better than luck (always answering the commonest "
                     f"class scores {report['chance_top1']:.1%}, and on {report['photos']} photos luck alone reaches "
                     f"{report['luck_top1']:.1%}); the model has not shown it tells these classes apart (train "
                     "from ImageNet weights, with more photos or more epochs)")
    lines.append(calibration_line(report["calibration"]))
    scored = [(m["recall"], name, m) for name, m in report["per_class"].items() if m["recall"] is not None]
    for recall, name, m in sorted(scored, key=lambda t: t[0])[:5]:
        precision = "n/a" if m["precision"] is None else f"{m['precision']:.0%}"
        lines.append(f"  hardest: {name:28s} recall {recall:.0%}  precision {precision}  ({m['photos']} photos)")
    return lines


def calibration_line(calibration: dict) -> str:
    """'calibration: temperature 0.71, expected calibration error 0.085 -> 0.021 (10 confidence bins)'."""
    bins = f"({calibration['bins']} confidence bins)"
    if calibration["temperature"] == 1.0:
        return f"calibration: no temperature (T = 1), expected calibration error {calibration['ece_after']:.3f} {bins}"
    return (f"calibration: temperature {calibration['temperature']:.3g}, expected calibration error "
            f"{calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f} {bins}")
