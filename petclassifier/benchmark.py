"""Speed benchmark: the usual tutorial pipeline against this package's, same data, model, batch size and threads.

Tutorial: a Dataset that opens each JPEG with PIL and applies torchvision transforms in DataLoader workers, a
plain fp32 loop that fine-tunes the whole network (SGD with momentum, cosine schedule).
Project: photos decoded once into the uint8 cache, crops and flips on whole batches on the training device,
channels_last, bf16 autocast on CUDA, BatchNorm folded for inference, and the default recipe's fast path.
Each pipeline runs in its own process, so that its peak resident memory is its own.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import multiprocessing
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from .cache import decode_split
from .config import TrainConfig
from .data import load_data
from .errors import UserError
from .models import build_model, fold_batchnorm
from .predict import PetClassifier
from .runtime import autocast, resolve_device
from .train import evaluate, fit, train_one_epoch, warmup_cosine
from .transforms import Preprocessing


class PathDataset(Dataset):
    """The tutorial's dataset: open, convert and transform one photo per item."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), self.labels[i]


def tutorial_transforms(prep: Preprocessing):
    normalize = T.Normalize(prep.mean, prep.std)
    train = T.Compose([T.RandomResizedCrop(prep.crop), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    evaluation = T.Compose([T.Resize(prep.resize), T.CenterCrop(prep.crop), T.ToTensor(), normalize])
    return train, evaluation


def peak_rss_mb() -> float:
    """Peak resident memory of this process plus its largest child (DataLoader workers), in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + children) / 1024, 1)


def latencies_ms(predict_one, paths, repeats: int) -> tuple[float, float]:
    """p50 and p95 of single-photo prediction (file to probabilities), model already loaded."""
    predict_one(paths[0])  # warm-up
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        predict_one(paths[i % len(paths)])
        times.append((time.perf_counter() - started) * 1000)
    q = statistics.quantiles(times, n=20)
    return round(statistics.median(times), 2), round(q[18], 2)


def timed_steps(model, batches, prepare, device, optimizer) -> float:
    """Images per second of full training steps (forward, loss, backward, step) over `batches` after one warm-up."""
    criterion = nn.CrossEntropyLoss()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    train_one_epoch(model, batches[:1], prepare, criterion, optimizer, scheduler, device, desc="warm-up")
    sync(device)
    started = time.perf_counter()
    train_one_epoch(model, batches[1:], prepare, criterion, optimizer, scheduler, device, desc="timed steps")
    sync(device)
    return sum(len(y) for _, y in batches[1:]) / (time.perf_counter() - started)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_tutorial(cfg: TrainConfig, epochs: int, steps: int, repeats: int) -> dict:
    """Fine-tune the whole network from PIL-decoded photos: throughput, then accuracy per epoch if epochs > 0."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    prep = Preprocessing.for_model(cfg.model, cfg.image_size)
    train_tf, eval_tf = tutorial_transforms(prep)
    model = build_model(cfg.model, len(data.class_names), cfg.pretrained).to(device)
    train_set = PathDataset(data.train.paths, data.train.labels, train_tf)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                              drop_last=True, pin_memory=device.type == "cuda")
    val_loader = DataLoader(PathDataset(data.val.paths, data.val.labels, eval_tf), batch_size=cfg.batch_size,
                            num_workers=cfg.workers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    result = {}
    if steps:
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                            drop_last=True, pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0)
        result["train_images_per_s"] = round(timed_steps(model, list_batches(loader, steps + 1), nn.Identity(),
                                                         device, optimizer), 2)
    started, best, reached_best_at, epoch_times = time.perf_counter(), None, None, []
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(0, max(1, epochs * len(train_loader))))
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        train_one_epoch(model, train_loader, nn.Identity(), nn.CrossEntropyLoss(), optimizer, scheduler, device,
                        desc=f"tutorial epoch {epoch + 1}/{epochs}")
        epoch_times.append(time.perf_counter() - epoch_start)
        accuracy = evaluate(model, val_loader, nn.Identity(), nn.CrossEntropyLoss(), device)["accuracy"]
        print(f"tutorial epoch {epoch + 1}: val accuracy {accuracy:.1%}, {epoch_times[-1]:.0f}s", flush=True)
        if best is None or accuracy > best:
            best, reached_best_at = accuracy, time.perf_counter() - started
    model.eval()
    with torch.inference_mode():  # batched prediction as the tutorial does it: decoding included
        passes = max(1, 2048 // len(data.val.paths)) if device.type == "cuda" else 1  # enough work for every worker
        paths, labels = data.val.paths * passes, data.val.labels * passes
        infer_loader = DataLoader(PathDataset(paths, labels, eval_tf), batch_size=cfg.batch_size,
                                  num_workers=cfg.workers)
        model(eval_tf(Image.open(paths[0]).convert("RGB"))[None].to(device))  # warm-up
        sync(device)
        infer_started = time.perf_counter()
        for x, _ in infer_loader:
            model(x.to(device))
        sync(device)
        infer_rate = len(paths) / (time.perf_counter() - infer_started)

        def predict_one(path):
            return model(eval_tf(Image.open(path).convert("RGB"))[None].to(device)).softmax(1).cpu()

        p50, p95 = latencies_ms(predict_one, data.val.paths, repeats)
    return {**result, "infer_images_per_s": round(infer_rate, 2), "latency_ms_p50": p50, "latency_ms_p95": p95,
            "epoch_seconds": round(statistics.mean(epoch_times), 3) if epoch_times else None,
            "peak_rss_mb": peak_rss_mb(), "seconds_to_target_accuracy": rounded(reached_best_at),
            "best_val_accuracy": rounded(best, 4)}


def list_batches(loader, n: int) -> list:
    """The first n batches of a loader, going round it again if one pass has fewer."""
    return list(itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), n))


def rounded(v, digits: int = 1):
    return None if v is None else round(v, digits)


def run_project(cfg: TrainConfig, target: float | None, steps: int, repeats: int, out: str) -> dict:
    """The project pipeline: full fine-tune throughput (and the compute-bound rate), inference, then the recipe."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    prep = Preprocessing.for_model(cfg.model, cfg.image_size)
    images, labels = decode_split(data.train, prep, cfg)
    images, labels = images.load().to(device), labels.to(device)  # on a GPU the epoch then runs from GPU memory
    model = build_model(cfg.model, len(data.class_names), cfg.pretrained).to(device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    passes = math.ceil((steps + 1) * cfg.batch_size / len(labels)) + 1
    order = torch.cat([torch.randperm(len(labels), generator=generator) for _ in range(passes)])
    batches = [(images[idx], labels[idx]) for idx in order.split(cfg.batch_size)[: steps + 1]]
    train_rate = timed_steps(model, batches, lambda x: prep.train_batch(x, generator), device, optimizer)
    # the same steps on batches already normalised in device memory: the model's compute-bound rate
    synthetic = [(torch.randn(len(y), 3, prep.crop, prep.crop, device=device).contiguous(
        memory_format=torch.channels_last), y) for _, y in batches]
    compute_rate = timed_steps(model, synthetic, nn.Identity(), device, optimizer)
    del synthetic, batches, optimizer

    infer_model = fold_batchnorm(copy.deepcopy(model).eval())
    val_images, _ = decode_split(data.val, prep, cfg)
    val_images = val_images.load().to(device)
    infer_batch = 256 if device.type == "cuda" else 16  # CPU: small batches stay in cache and run faster
    with torch.inference_mode(), autocast(device):
        reps = max(1, 2048 // len(val_images)) if device.type == "cuda" else 1  # enough work to time on a GPU
        infer_model(prep.eval_batch(val_images[:infer_batch]))
        sync(device)
        started = time.perf_counter()
        for _ in range(reps):
            for i in range(0, len(val_images), infer_batch):
                infer_model(prep.eval_batch(val_images[i : i + infer_batch]))
        sync(device)
        infer_rate = reps * len(val_images) / (time.perf_counter() - started)
    classifier = PetClassifier(model, data.class_names, prep, device=cfg.device)  # folds its own copy
    p50, p95 = latencies_ms(classifier.predict, data.val.paths, repeats)
    result = {"train_images_per_s": round(train_rate, 2), "compute_bound_images_per_s": round(compute_rate, 2),
              "infer_images_per_s": round(infer_rate, 2), "latency_ms_p50": p50, "latency_ms_p95": p95}
    del model, infer_model, classifier, images
    if target is None:  # throughput only
        return {**result, "peak_rss_mb": peak_rss_mb()}

    started = time.perf_counter()
    summary = fit(replace(cfg, out=out))
    total = time.perf_counter() - started
    rows = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    reached = next((r["elapsed"] for r in rows if r["val_accuracy"] >= target), None)
    return {**result, "epoch_seconds": round(statistics.mean(r["seconds"] for r in rows), 3),
            "peak_rss_mb": peak_rss_mb(), "seconds_to_target_accuracy": reached, "recipe_seconds": round(total, 1),
            "recipe_images_per_s": round(len(rows) * len(labels) / total, 2),
            "best_val_accuracy": summary["best_val_accuracy"], "test_accuracy": summary.get("test_accuracy")}


def _child(fn, args, queue):
    queue.put(fn(*args))


def in_own_process(fn, *args) -> dict:
    """Run a pipeline in a fresh process (its own peak memory) and return its result."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def run_benchmark(cfg: TrainConfig, tutorial_epochs: int, steps: int, repeats: int, out: str) -> dict:
    """Both pipelines, each in its own process; with tutorial_epochs 0, throughput and latency only."""
    cfg = cfg.resolved()
    if Path(out, "metrics.jsonl").exists():  # fit would append to it, and the times would mix two runs
        raise UserError(f"{out} already holds a training run; give the benchmark a new --out folder")
    device = resolve_device(cfg.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    tutorial = in_own_process(run_tutorial, cfg, tutorial_epochs, steps, repeats)
    project = in_own_process(run_project, cfg, tutorial["best_val_accuracy"], steps, repeats, out)
    return {"device": name, "model": cfg.model, "image_size": cfg.image_size, "batch_size": cfg.batch_size,
            "tutorial": tutorial, "project": project}


def format_table(result: dict) -> str:
    keys = ["train_images_per_s", "compute_bound_images_per_s", "infer_images_per_s", "latency_ms_p50",
            "latency_ms_p95", "epoch_seconds", "peak_rss_mb", "seconds_to_target_accuracy", "best_val_accuracy"]
    t, p = result["tutorial"], result["project"]
    lines = [f"{result['model']} at {result['image_size']} px, batch {result['batch_size']}, on {result['device']}",
             f"{'':28s} {'tutorial':>12s} {'project':>12s} {'ratio':>8s}"]
    for k in keys:
        a, b = t.get(k), p.get(k)
        ratio = f"{b / a:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else ""
        lines.append(f"{k:28s} {fmt(a):>12s} {fmt(b):>12s} {ratio:>8s}")
    if "compute_bound_images_per_s" in p:
        share = p["train_images_per_s"] / p["compute_bound_images_per_s"]
        lines.append(f"project training runs at {share:.0%} of the model's compute-bound rate")
    if "recipe_seconds" in p:
        lines.append(f"project default recipe: {fmt(p['recipe_seconds'])} s in all, test accuracy "
                     f"{fmt(p.get('test_accuracy'))}; tutorial best val accuracy {fmt(t.get('best_val_accuracy'))}")
    return "\n".join(lines)


def fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) and not math.isnan(v) else str(v)
