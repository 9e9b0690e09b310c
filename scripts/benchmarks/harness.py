"""Speed as users feel it: the PyTorch tutorial's pipeline (`tutorial.py`) and this package's, doing the same work on
the same photos, with the same threads, decode workers, memory format (channels_last) and autocast, in one run.

- train: wall seconds from process start to the final test score (each run is its own `python` process), the test
  accuracy, and when the validation accuracy first reached 80/85/90%. Different recipes on the same photos and
  network, which is the point: the tutorial fine-tunes every layer (and, `tutorial_frozen`, trains its head on a
  frozen body, running the body every epoch); the package trains its head on frozen features computed once per view
  (default recipe) with a cold cache, again warm (photos decoded and features computed by the cold run), and its
  fastest setting (efficientnet_lite0's recipe) cold. `project_cold_torch` is the default recipe cold with the
  frozen pass on PyTorch (`--backend torch`), the others' backend as the flags say (auto: ONNX Runtime float32 on a
  CPU where installed; its cold runs include exporting the frozen stages).
- predict_folder: files in, labels out, the network loaded; latency_ms: one photo from its path to probabilities.
  `project` scores each photo once into a softmax of its logits, as the tutorial does (the checkpoint's temperature
  was fitted on flip-averaged logits, so it is left out), through the checkpoint's ONNX copy on ONNX Runtime float32
  (what `predict` runs on a CPU); `project_torch` the same on PyTorch; `project_flip_tta` adds the mirror image's
  pass and the temperature, as `predict` runs the checkpoint's recipe.
- train_step: full fine-tune steps with each pipeline's batches drawn inside the timer: the tutorial's workers decode
  and augment JPEG files; the package's photos were decoded before the timer (its first epoch does that once) and
  the timed part crops and flips them as whole batches.
- startup: `petclassifier --help` and `petclassifier predict PHOTO` as processes: wall seconds and peak memory; and
  a bare `python -c "import torch"`, the floor under any command that runs the network.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from benchmarks.tutorial import photo_loader, tutorial_transforms
from petclassifier.config import TrainConfig
from petclassifier.data.cache import decode_split
from petclassifier.data.datasets import load_data
from petclassifier.data.splits import PetData, Split
from petclassifier.data.transforms import Preprocessing
from petclassifier.distributed import ShardedBatches
from petclassifier.engine.loop import train_one_epoch
from petclassifier.engine.metrics import epoch_rows
from petclassifier.errors import UserError
from petclassifier.inference.predict import PetClassifier
from petclassifier.models.registry import build_model
from petclassifier.runtime import autocast, resolve_device

TUTORIAL = Path(__file__).with_name("tutorial.py")  # run as a process of its own
THRESHOLDS = ("0.80", "0.85", "0.90")  # validation accuracies whose time to reach is reported
FAST_MODEL = "efficientnet_lite0"  # the fastest documented setting is this model's recipe
NOT_PASSED_ON = ("cache_dir", "out", "resume")  # the benchmark chooses these for each run


def train_flags(cfg: TrainConfig, **changes) -> list[str]:
    """The `petclassifier train` flags that give this config: one per field that differs from the defaults."""
    cfg, default, flags = replace(cfg, **changes), TrainConfig(), []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in NOT_PASSED_ON or value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        flags += [flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    return flags


# Started from this process, which holds torch, a command's peak memory would count the pages it was forked with
# (Linux keeps a process's peak across exec). A bare Python process starts it instead and reports, in the file named
# by its first argument, when it started it, the wall seconds to its end and its peak resident memory (KB).
LAUNCHER = """import resource, subprocess, sys, time
started = time.time()
status = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(f"{started} {time.time() - started} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
sys.exit(status)
"""


def run_process(argv: list[str], log: Path) -> tuple[float, float, float, list[str]]:
    """(Unix time it started, wall seconds to its end, peak resident MB, output lines) of a command run to its end;
    its output goes to `log`."""
    measured = log.with_suffix(".measured")
    with open(log, "w") as f:
        status = subprocess.call([sys.executable, "-c", LAUNCHER, str(measured), *argv], stdout=f,
                                 stderr=subprocess.STDOUT)
    lines = log.read_text().splitlines()
    if status != 0:
        last = lines[-1] if lines else "no output"
        raise UserError(f"{' '.join(argv[1:4])} ... ended with status {status} ({last}); its output: {log}")
    started, seconds, peak_kb = map(float, measured.read_text().split())
    return started, seconds, peak_kb / 1024, lines


def train_result(seconds: float, test_accuracy: float, curve: list[list[float]]) -> dict:
    """One train run's figures; curve: [seconds since its start, validation accuracy] per epoch."""
    reached = {t: next((s for s, acc in curve if acc >= float(t)), None) for t in THRESHOLDS}
    return {"seconds": round(seconds, 1), "test_accuracy": test_accuracy, "seconds_to_val_accuracy": reached,
            "curve": curve}


def train_tutorial_run(cfg: TrainConfig, epochs: int, frozen: bool, log: Path) -> dict:
    argv = [sys.executable, str(TUTORIAL), *train_flags(cfg, epochs=epochs)] + ["--frozen"] * frozen
    started, seconds, _, lines = run_process(argv, log)
    events = [json.loads(line) for line in lines if line.startswith("{")]
    curve = [[round(e["time"] - started, 1), e["val_accuracy"]] for e in events if "epoch" in e]
    return train_result(seconds, events[-1]["test_accuracy"], curve)


def train_project_run(cfg: TrainConfig, cache: Path, out: Path, log: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a run left by an earlier benchmark would get these epochs appended
    argv = [sys.executable, "-m", "petclassifier", "train", *train_flags(cfg), "--cache-dir", str(cache),
            "--out", str(out)]
    started, seconds, _, _ = run_process(argv, log)
    rows = epoch_rows(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    curve = [[round(r["time"] - started, 1), r["val_accuracy"]] for r in rows]
    return train_result(seconds, summary.get("test_accuracy"), curve)


def train_runs(cfg: TrainConfig, tutorial_epochs: int, out: Path) -> dict:
    """The six ways to a model, one after another (never two at once: they would share the CPU)."""
    for cache in ("cache-torch", "cache-cold", "cache-fast"):
        shutil.rmtree(out / cache, ignore_errors=True)  # cold: nothing decoded, computed or exported yet
    runs = {}
    for name, frozen in (("tutorial", False), ("tutorial_frozen", True)):
        print(f"train: {name} ({tutorial_epochs} epochs)", flush=True)
        runs[name] = train_tutorial_run(cfg, tutorial_epochs, frozen, out / f"{name}.log")
    for name, run_cfg, cache in (("project_cold_torch", replace(cfg, backend="torch"), "cache-torch"),
                                 ("project_cold", cfg, "cache-cold"), ("project_warm", cfg, "cache-cold"),
                                 ("project_fast", replace(cfg, model=FAST_MODEL), "cache-fast")):
        print(f"train: {name}", flush=True)
        runs[name] = train_project_run(run_cfg, out / cache, out / name, out / f"{name}.log")
    return runs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(n: int, started: float) -> float:
    return round(n / (time.perf_counter() - started), 2)


def classifiers(checkpoint: Path, device: str, cache: Path) -> dict:
    """The package's ways to answer: scoring each photo once, the tutorial's work, through the checkpoint's ONNX copy
    ("project", what `predict` runs on a CPU with ONNX Runtime installed) and on PyTorch ("project_torch"); and, where
    the checkpoint's recipe adds the mirror image's pass, as `predict` runs it ("project_flip_tta")."""
    from petclassifier.engine.choice import onnx_installed
    from petclassifier.inference.onnx_copy import ready_copy

    as_saved = PetClassifier.from_checkpoint(checkpoint, device=device)
    on_torch = PetClassifier.from_checkpoint(checkpoint, device=device, flip_tta=False)
    on_torch.scoring.temperature = 1.0  # the saved one was fitted on flip-averaged logits, not these
    found = {"project_torch": on_torch}
    on_cpu = as_saved.device.type == "cpu" and onnx_installed()
    if on_cpu:
        found["project"] = ready_copy(checkpoint, cache, flip_tta=False)
    if as_saved.flip_tta:
        found["project_flip_tta"] = ready_copy(checkpoint, cache) if on_cpu else as_saved
    return found


def predict_folder(checkpoint: Path, paths: list[str], workers: int, device: str, cache: Path) -> dict:
    """Images per second from files to top-5 labels, the network already loaded."""
    ours = classifiers(checkpoint, device, cache)
    plain = ours["project_torch"]
    model, labels = plain.model, plain.class_names  # the same network, not folded: as the tutorial has it
    _, eval_tf = tutorial_transforms(plain.preprocessing)
    loader = photo_loader(Split(list(paths), [0] * len(paths)), eval_tf, workers)
    started, answers = time.perf_counter(), []
    with torch.inference_mode(), autocast(plain.device):
        for x, _ in loader:
            top = model(x.to(plain.device)).float().softmax(1).topk(min(5, len(labels)))
            answers += [[labels[i] for i in row] for row in top.indices.tolist()]
    result = {"tutorial": {"images_per_s": rate(len(answers), started)}}
    for name, classifier in ours.items():
        started = time.perf_counter()
        answers = classifier.predict_paths(paths, workers=workers)
        result[name] = {"images_per_s": rate(len(answers), started)}
    return result


def percentiles_ms(predict_one, paths: list[str], repeats: int) -> dict:
    """p50 and p95 of one photo's prediction from its path, after one warm-up."""
    predict_one(paths[0])
    times = []
    for path in itertools.islice(itertools.cycle(paths), repeats):
        started = time.perf_counter()
        predict_one(path)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50": round(statistics.median(times), 2), "p95": round(statistics.quantiles(times, n=20)[18], 2)}


def latency(checkpoint: Path, paths: list[str], repeats: int, device: str, cache: Path) -> dict:
    ours = classifiers(checkpoint, device, cache)
    plain = ours["project_torch"]
    _, eval_tf = tutorial_transforms(plain.preprocessing)

    @torch.inference_mode()
    def tutorial_one(path):
        x = eval_tf(Image.open(path).convert("RGB"))[None].to(plain.device)
        with autocast(plain.device):
            return plain.model(x).float().softmax(1).cpu()

    result = {"tutorial": percentiles_ms(tutorial_one, paths, repeats)}
    return result | {name: percentiles_ms(classifier.predict, paths, repeats) for name, classifier in ours.items()}


def timed_steps(model, batches, prepare, device, steps: int) -> float:
    """Images per second of `steps` full training steps, batches drawn (and prepared) inside the timer."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = iter(batches)
    warm_up = [next(batches)]  # the first step allocates; the workers have started
    train_one_epoch(model, warm_up, prepare, nn.CrossEntropyLoss(), optimizer, scheduler, device, desc="warm-up")
    sync(device)
    counted = []
    started = time.perf_counter()
    train_one_epoch(model, (counted.append(len(y)) or (x, y) for x, y in itertools.islice(batches, steps)), prepare,
                    nn.CrossEntropyLoss(), optimizer, scheduler, device, desc="timed steps")
    sync(device)
    return rate(sum(counted), started)


def train_step(cfg: TrainConfig, data: PetData, steps: int) -> dict:
    """Full fine-tune throughput of the two data pipelines, each batch drawn inside the timer."""
    cfg = replace(cfg, trainable_stages=-1).resolved()
    device = resolve_device(cfg.device)
    prep = Preprocessing.for_model(cfg.model, cfg.image_size)

    def network() -> nn.Module:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, len(data.class_names), cfg.pretrained)
        return model.to(device, memory_format=torch.channels_last)

    train_tf, _ = tutorial_transforms(prep)
    loader = photo_loader(data.train, train_tf, cfg.workers, shuffle=True, batch_size=cfg.batch_size)
    tutorial = timed_steps(network(), itertools.chain.from_iterable(itertools.repeat(loader)), nn.Identity(), device,
                           steps)
    del loader  # its workers stop: they would hold memory while the package's pipeline is timed
    # the package's batches: rows of its decoded-photo store (decoded before the timer, as a run's first epoch
    # does once), cropped and flipped as whole batches on the device
    images, labels = decode_split(data.train, prep, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = ShardedBatches(images, labels, cfg.batch_size, cfg.seed)
    epochs = (batches.set_position(epoch) or batches for epoch in itertools.count())
    project = timed_steps(network(), itertools.chain.from_iterable(epochs), lambda x: prep.train_batch(x, generator),
                          device, steps)
    return {"tutorial": {"images_per_s": tutorial}, "project": {"images_per_s": project}}


def startup(checkpoint: Path, photo: str, out: Path, repeats: int = 3) -> dict:
    """Median wall seconds and peak memory of `petclassifier --help`, of predicting one photo (the checkpoint's ONNX
    copy written by an earlier call, as a user's second call finds it) and of importing torch, as processes."""
    command = [sys.executable, "-m", "petclassifier"]
    predict = command + ["predict", "--checkpoint", str(checkpoint), "--cache-dir", str(out / "cache-cold"), photo]
    runs = {"help": command + ["--help"], "predict_one": predict,
            "import_torch": [sys.executable, "-c", "import torch"]}
    result = {}
    for name, argv in runs.items():
        measured = [run_process(argv, out / f"{name}.log")[1:3] for _ in range(repeats)]
        result[f"{name}_seconds"] = round(statistics.median(s for s, _ in measured), 2)
        result[f"{name}_peak_rss_mb"] = round(statistics.median(m for _, m in measured), 1)
    return result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores ({torch.backends.cpu.get_cpu_capability()})"


def run_benchmark(cfg: TrainConfig, out: Path, tutorial_epochs: int = 25, steps: int = 8, repeats: int = 40,
                  startup_repeats: int = 3) -> dict:
    """Every figure, one measurement after another; run folders, logs and caches go under `out`."""
    device = resolve_device(cfg.device)
    resolved = cfg.resolved()
    # a wrong dataset or model, or a missing weights package: said before any run, not after the tutorial's hour
    data = load_data(resolved)
    paths = (data.test or data.val).paths
    build_model(resolved.model, 2, resolved.pretrained)
    build_model(FAST_MODEL, 2, pretrained=True)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": device_name(device), "model": resolved.model, "threads": torch.get_num_threads(),
              "train": train_runs(cfg, tutorial_epochs, out)}
    checkpoint = out / "project_cold" / "best.pt"  # the default recipe's model scores the photos on both sides
    print("predict: a folder, then one photo at a time", flush=True)
    result["predict_folder"] = predict_folder(checkpoint, paths, resolved.workers, cfg.device, out / "cache-cold")
    result["latency_ms"] = latency(checkpoint, paths, repeats, cfg.device, out / "cache-cold")
    print("train_step: full fine-tune steps", flush=True)
    result["train_step"] = train_step(replace(cfg, cache_dir=str(out / "cache-cold")), data, steps)
    print("startup: --help and predict of one photo", flush=True)
    result["startup"] = startup(checkpoint, paths[0], out, startup_repeats)
    return result


def format_table(result: dict) -> str:
    """The figures as a user reads them."""
    lines = [f"{result['model']} on {result['device']}, {result['threads']} threads",
             f"{'train':17s} {'seconds':>8s} {'test acc':>9s} " + " ".join(f"{'to ' + t:>8s}" for t in THRESHOLDS)]
    for name, run in result["train"].items():
        reached = " ".join(f"{fmt(run['seconds_to_val_accuracy'][t]):>8s}" for t in THRESHOLDS)
        lines.append(f"{name:17s} {run['seconds']:8.1f} {fmt(run['test_accuracy'], '.1%'):>9s} {reached}")
    for section, unit in (("predict_folder", "images_per_s"), ("train_step", "images_per_s")):
        figures = ", ".join(f"{k} {v[unit]:.1f}" for k, v in result[section].items())
        lines.append(f"{section} (images/s): {figures}")
    lines.append("latency_ms (p50 / p95): " + ", ".join(
        f"{k} {v['p50']:.1f} / {v['p95']:.1f}" for k, v in result["latency_ms"].items()))
    s = result["startup"]
    lines.append(f"startup: --help {s['help_seconds']} s, {s['help_peak_rss_mb']:.0f} MB; predict one photo "
                 f"{s['predict_one_seconds']} s, {s['predict_one_peak_rss_mb']:.0f} MB; import torch "
                 f"{s['import_torch_seconds']} s, {s['import_torch_peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)
