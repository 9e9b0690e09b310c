"""What the page's answers come from: the served model and those taught in the page, loaded once, their requests
batched on one thread; the model's description and learning curve."""

from __future__ import annotations

import asyncio
import io
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from starlette.exceptions import HTTPException

from ..data.images import centre_crop, decoded_square
from ..engine.metrics import epoch_rows
from ..inference.predict import PetClassifier
from ..insight.explain import GradCAM, heat_overlay, upsample
from ..models.checkpoint import describe, flip_tta_of, load_checkpoint, task_of, temperature_of
from .job_files import read_json
from .job_input import MAX_JOB_PHOTOS
from .limits import MAX_FILES, MAX_TRAIN_BYTES, MAX_UPLOAD_BYTES, check_pixels
from .teach import Job

TAUGHT_MODELS_KEPT = 2  # models taught in the page kept loaded (the latest used)
NO_MODEL = "no model is served here: teach one in the page, or start serve with --checkpoint"


class PhotoService:
    """The trained classifiers behind the API (the served checkpoint, and models taught in the page), loaded and
    run on one thread of their own, in arrival order; predict requests that wait together share forward passes.

    A forward pass already uses every core; and on 2 CPU cores a second thread running torch made every pass about
    half as slow again (each thread gets its own OpenMP team, which compete), and the server's memory grew with each
    new thread that ran the network (glibc gives each its own heap). One thread also means one photo of up to 89
    megapixels decoded at a time, however many requests wait: each is cut to the square the network sees before the
    next."""

    def __init__(self, checkpoint: Path | None, device: str = "auto"):
        self.device, self.worker = device, ThreadPoolExecutor(1, thread_name_prefix="network")
        self.taught: OrderedDict[str, Loaded] = OrderedDict()  # job id -> its model, the latest used last
        # None: no model served yet, only the ones taught in the page
        self.served = self.worker.submit(Loaded.of, checkpoint, device).result() if checkpoint else None
        self.waiting, self.lock = [], threading.Lock()  # predict requests not yet through the network

    @property
    def classifier(self) -> PetClassifier:
        return self.served.classifier

    @property
    def info(self) -> dict | None:
        return self.served.info if self.served else None

    def model(self, job: Job | None) -> Loaded:
        """The served model, or a taught job's (loaded at its first use; the last few used are kept)."""
        if job is None:
            return self.served
        if job.id not in self.taught:
            self.taught[job.id] = Loaded.of(job.checkpoint, self.device)
            while len(self.taught) > TAUGHT_MODELS_KEPT:
                self.taught.popitem(last=False)
        self.taught.move_to_end(job.id)
        return self.taught[job.id]

    async def run(self, work, *args):
        """`work(*args)` on the service's thread, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, work, *args)

    async def predict(self, uploads: list[tuple[str, bytes]], top_k: int, job: Job | None = None) -> list[dict]:
        """One `predict --json` entry per upload, in upload order; unreadable ones get an error entry.

        Requests that wait while the network is busy go through it together: their photos share forward passes.
        """
        check_pixels(uploads)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        with self.lock:
            self.waiting.append((uploads, top_k, job, answer, loop))
        self.worker.submit(self._predict_waiting)  # the first of these to run takes every waiting request
        return await answer

    def _predict_waiting(self) -> None:
        """Every waiting request's photos through its model in batches; each request's entries to its future."""
        with self.lock:
            requests, self.waiting = self.waiting, []
        for job in {id(r[2]): r[2] for r in requests}.values():  # each model's requests share its passes
            self._predict_together([r for r in requests if r[2] is job])

    def _predict_together(self, requests: list) -> None:
        try:
            loaded = self.model(requests[0][2])
            names = [name for uploads, *_ in requests for name, _ in uploads]
            decoded = [loaded.decode(data) for uploads, *_ in requests for _, data in uploads]
            top_k, size, predictions = max(r[1] for r in requests), loaded.classifier.batch_size, []
            for start in range(0, len(decoded), size):
                predictions += loaded.classifier.scored(names[start : start + size], decoded[start : start + size],
                                                        top_k)
            for uploads, k, _, answer, loop in requests:
                mine, predictions = predictions[: len(uploads)], predictions[len(uploads) :]
                entries = [replace(p, labels=p.labels[:k]).as_dict() for p in mine]
                loop.call_soon_threadsafe(settle, answer, entries, None)
        except Exception as e:  # each waiting request fails with it, as it would alone
            for *_, answer, loop in requests:
                loop.call_soon_threadsafe(settle, answer, None, e)

    def explain(self, name: str, data: bytes, class_name: str | None, job: Job | None = None) -> tuple:
        """(PNG of the Grad-CAM overlay on the square the network sees, its class, that class's probability)."""
        return self.model(job).explain(name, data, class_name)


@dataclass
class Loaded:
    """One classifier the service runs, with its Grad-CAM and what the page shows about it."""

    classifier: PetClassifier
    gradcam: GradCAM
    info: dict

    @classmethod
    def of(cls, checkpoint: Path, device: str) -> Loaded:
        ckpt = load_checkpoint(checkpoint)
        classifier = PetClassifier.from_loaded(ckpt, device)
        # gradients of activations, not of weights
        return cls(classifier, GradCAM(classifier.model.requires_grad_(False)), model_info(checkpoint, ckpt))

    def decode(self, data: bytes) -> np.ndarray | str:
        """The uint8 square [3, R, R] the network sees of an upload's bytes, or why they are not a readable photo."""
        if not data:
            return "empty file (0 bytes)"
        prep = self.classifier.preprocessing
        return decoded_square(io.BytesIO(data), prep.resize, prep.interpolation)  # the upload's name is never opened

    def explain(self, name: str, data: bytes, class_name: str | None) -> tuple[bytes, str, float]:
        c = self.classifier
        if class_name is not None and class_name not in c.class_names:
            raise HTTPException(400, f"unknown class {class_name!r}; the model knows: {', '.join(c.class_names)}")
        square = self.decode(data)
        if isinstance(square, str):
            raise HTTPException(400, f"{name}: {square}")
        square = torch.from_numpy(square)
        probs = c._square_outputs(square[None])[0][0]  # as predict reports them: temperature, flip TTA
        k = c.class_names.index(class_name) if class_name else int(probs.argmax())
        cam, _ = self.gradcam(c.preprocessing.eval_batch(square[None].to(c.device)), torch.tensor([k]).to(c.device))
        crop = c.preprocessing.crop
        overlay = heat_overlay(centre_crop(square, crop), upsample(cam[0].cpu(), crop))
        png = io.BytesIO()
        Image.fromarray(overlay.permute(1, 2, 0).numpy()).save(png, "PNG")
        return png.getvalue(), c.class_names[k], float(probs[k])


def settle(answer: asyncio.Future, result, error: BaseException | None) -> None:
    """Give a waiting request its result or error (on its event loop), unless it has gone meanwhile."""
    if answer.done():  # the client disconnected and its request was cancelled
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(result)


def model_info(checkpoint: Path, ckpt: dict) -> dict:
    """What the page shows about the model: task, classes, accuracy from its run, and the run's learning curve."""
    run = checkpoint.parent
    summary = read_json(run / "summary.json")
    if summary and Path(summary.get("checkpoint", "")).name == checkpoint.name and "test_accuracy" in summary:
        accuracy = {"split": "test", "value": summary["test_accuracy"], "photos": summary.get("photos", {}).get("test")}
    elif (ckpt.get("metrics") or {}).get("val_accuracy") is not None:
        accuracy = {"split": "validation", "value": ckpt["metrics"]["val_accuracy"], "photos": None}
    else:
        accuracy = None
    try:
        curve = epoch_rows(run / "metrics.jsonl", ("epoch", "train_loss", "val_loss", "val_accuracy"))
    except OSError:  # a checkpoint without its run folder: no curve
        curve = []
    return {"checkpoint": f"{run.name}/{checkpoint.name}", "description": describe(ckpt), "model": ckpt["model_name"],
            "task": task_of(ckpt), "class_names": ckpt["class_names"], "species_of": ckpt.get("species_of") or None,
            "image_size": ckpt["preprocessing"]["crop"], "flip_tta": flip_tta_of(ckpt),
            "temperature": temperature_of(ckpt), "not_a_pet": ckpt.get("imagenet_stages") is not None,
            "accuracy": accuracy, "curve": curve, "max_upload_bytes": MAX_UPLOAD_BYTES, "max_files": MAX_FILES,
            "max_job_photos": MAX_JOB_PHOTOS, "max_train_bytes": MAX_TRAIN_BYTES}
