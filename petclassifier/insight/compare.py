"""Hand-crafted features and a linear classifier against learned features (a CNN from scratch, a pretrained one)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from ..config import TrainConfig
from ..data.cache import decode_split
from ..data.datasets import load_data
from ..data.images import centre_crop
from ..data.transforms import Preprocessing
from ..engine.metrics import metrics_report
from ..errors import UserError
from ..training.run import fit
from .evaluate import evaluate_checkpoint
from .evaluate import write_outputs as write_evaluation
from .handcrafted import LinearClassifier, handcrafted_features

HANDCRAFTED = "colour hist + HOG + LBP, linear"
# Each learned method trains with its own full recipe (config.RECIPES), so the table compares methods, not how
# long each was allowed to run: smallcnn learns every layer from these photos alone (36 epochs), the default
# pretrained model learns only its head on the frozen ImageNet body. `epochs` shortens smallcnn's run.
METHODS = ("handcrafted", "smallcnn", "pretrained")


def handcrafted_row(cfg: TrainConfig, split: str) -> dict:
    """Features an expert designed, then the only learning is a linear classifier on top."""
    data = load_data(cfg)
    prep = Preprocessing.for_model("smallcnn", 128)
    started = time.perf_counter()
    feats = {}
    for name in ("train", "val", split):
        images, labels = decode_split(getattr(data, name), prep, cfg)
        feats[name] = (handcrafted_features(centre_crop(images.load(), prep.crop)), labels)
    # scored on the val split (a folder without test/), the classifier must not have learned from it
    classifier = LinearClassifier().fit(*feats["train"], *feats["val"], len(data.class_names), refit=split != "val")
    seconds = time.perf_counter() - started
    x_eval, y_eval = feats[split]
    report = metrics_report(classifier.logits(x_eval), y_eval, data.class_names)
    return row(task_label(cfg), HANDCRAFTED, "hand-crafted", report, seconds)


def learned_row(cfg: TrainConfig, method: str, out: Path, split: str) -> dict:
    """Train with the package's own loop, then evaluate the best checkpoint on the same split."""
    started = time.perf_counter()
    summary = fit(replace(cfg, out=str(out)))
    seconds = time.perf_counter() - started
    result = evaluate_checkpoint(summary["checkpoint"], split=split, device=cfg.device)
    # the pictures are a bonus here: without matplotlib only the JSON is written
    write_evaluation(result, out if plots_available() else None, out / "evaluation.json")
    report = result["report"]
    return row(task_label(cfg), method, "learned", report, seconds)


def plots_available() -> bool:
    try:
        from .plots import pyplot

        pyplot()
        return True
    except UserError:
        return False


def task_label(cfg: TrainConfig) -> str:
    """breed or species for Oxford; the folder's name for a user's own classes."""
    return Path(cfg.data_dir).name if cfg.dataset == "folder" else cfg.task


def row(task: str, method: str, features: str, report: dict, seconds: float) -> dict:
    return {"task": task, "method": method, "features": features, "accuracy": round(report["top1"], 4),
            "mean_per_class_accuracy": round(report["mean_per_class_accuracy"], 4),
            "train_seconds": round(seconds, 1), "photos": report["photos"]}


def compare(base: TrainConfig, tasks: list[str], out: Path, epochs: int | None = None,
            methods: tuple[str, ...] = METHODS) -> list[dict]:
    """One row per (task, method), all evaluated on the same split of the same photos."""
    rows = []
    for task in tasks:
        cfg = replace(base, task=task).resolved()
        split = "test" if load_data(cfg).test is not None else "val"
        print(f"== task {task}: evaluating on the {split} split")
        if "handcrafted" in methods:
            rows.append(handcrafted_row(cfg, split))
            print(table(rows[-1:], header=False))
        if "smallcnn" in methods:
            small = replace(base, task=task, model="smallcnn", epochs=epochs).resolved()  # None: the recipe's
            rows.append(learned_row(small, f"smallcnn from scratch ({small.epochs} ep)", out / f"smallcnn-{task}",
                                    split))
        if "pretrained" in methods:
            name = TrainConfig().model  # the default model, with its recipe
            pre = replace(base, task=task, model=name, pretrained=True).resolved()
            rows.append(learned_row(pre, f"{name} pretrained on ImageNet", out / f"{name}-{task}", split))
    return rows


def table(rows: list[dict], header: bool = True) -> str:
    """A plain-text table (also valid Markdown) of the comparison rows."""
    lines = ["| task | method | features | accuracy | mean per-class acc. | train time |",
             "|---|---|---|---|---|---|"] if header else []
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {r['features']} | {r['accuracy']:.1%} | "
                     f"{r['mean_per_class_accuracy']:.1%} | {r['train_seconds']:.0f} s |")
    return "\n".join(lines)


def write_outputs(rows: list[dict], json_path: str | None, chart: Path | None) -> None:
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    if chart:
        from .plots import plot_comparison

        plot_comparison(rows, chart, "Hand-crafted features (grey) vs learned features (blue)")
