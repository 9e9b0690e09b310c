"""A checkpoint's ONNX copy: its whole answer (centre crop, network, flip averaging, calibrated softmax, "not a pet")
as one ONNX file that ONNX Runtime runs on the CPU, so that `predict` answers without loading PyTorch.

PyTorch writes the copy the first time `predict` meets a checkpoint (inference.export.write_onnx_copy); it is
kept in the cache folder under a digest of the checkpoint file's bytes and the recipe, and every later call with
that checkpoint starts in a fraction of the time that importing PyTorch takes. This module imports neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..data.images import ImageError, decoded_batches, readable
from .answers import Labels, Prediction

COPY_FORMAT = 2  # raised when what the copy holds changes, so older copies are written again
BATCH_SIZE = 16  # photos per run of the network on the CPU
def copy_folder(checkpoint: Path, cache_dir: str | Path, flip_tta: bool | None) -> Path:
    """Where the copy of `checkpoint` is kept: named by a digest of its bytes, so a changed file gets a new copy."""
    digest = hashlib.sha256(f"{COPY_FORMAT} {flip_tta}".encode())
    with open(checkpoint, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return Path(cache_dir) / "onnx" / "copies" / digest.hexdigest()[:24]


class OnnxCopy:
    """Predictions from a checkpoint's ONNX copy, as `PetClassifier` gives them."""

    def __init__(self, folder: Path):
        import onnxruntime

        self.answers = json.loads((folder / "answers.json").read_text())
        self.labels = Labels(self.answers["class_names"], self.answers["species_of"])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                                    providers=["CPUExecutionProvider"])

    def outputs(self, squares: np.ndarray) -> tuple[list[list[float]], list[bool | None]]:
        """(class probabilities, "not a pet" flags) of uint8 squares [N, 3, R, R]."""
        probs, pet = self.session.run(None, {"squares": np.ascontiguousarray(squares)})
        below = self.answers["pet_below"]
        return probs.tolist(), [None if np.isnan(p) else bool(p < below) for p in pet]

    def predict(self, path: str | Path, top_k: int = 5) -> list[tuple[str, float]]:
        """The `top_k` most likely labels of one photo file, most likely first."""
        [answer] = self.predict_paths([path], top_k, workers=0)
        if answer.error is not None:
            raise ImageError(answer.error)
        return answer.labels

    def predict_paths(self, paths: Sequence[str | Path], top_k: int = 5, workers: int = 2) -> list[Prediction]:
        """One Prediction per path, in order; a photo that cannot be read gets an error entry instead."""
        return list(self.iter_predictions(paths, top_k, workers))

    def iter_predictions(self, paths: Sequence[str | Path], top_k: int = 5, workers: int = 2) -> Iterator[Prediction]:
        """One Prediction per path, in order, each batch's as soon as it is through; `workers` 0: decode here."""
        paths = [str(p) for p in paths]
        batches = [paths[i : i + BATCH_SIZE] for i in range(0, len(paths), BATCH_SIZE)]
        how = (self.answers["resize"], self.answers["interpolation"], workers)
        for names, decoded in zip(batches, decoded_batches(batches, *how)):
            errors, squares = readable(decoded)
            probs, flags = self.outputs(squares) if squares is not None else ([], [])
            yield from self.labels.answers(names, errors, probs, flags, top_k)


def ready_copy(checkpoint: Path, cache_dir: str | Path, flip_tta: bool | None = None) -> OnnxCopy:
    """The checkpoint's copy, written first where there is none yet (PyTorch loaded for that once)."""
    from ..models.checkpoint import checked_file

    folder = copy_folder(checked_file(checkpoint), cache_dir, flip_tta)
    if not (folder / "answers.json").is_file():
        write_copy(checkpoint, folder, flip_tta)
    else:
        with contextlib.suppress(OSError):  # a read-only cache still serves
            os.utime(folder / "model.onnx")  # just used: the cache's clean-up removes the least recently used first
    return OnnxCopy(folder)


def write_copy(checkpoint: Path, folder: Path, flip_tta: bool | None) -> None:
    """Export the checkpoint to `folder`, whole or not at all (written beside it, then renamed)."""
    import shutil
    import sys

    from ..models.checkpoint import flip_tta_of, load_checkpoint, temperature_of
    from .export import write_onnx_copy

    started, ckpt = time.perf_counter(), load_checkpoint(checkpoint)
    flip = flip_tta_of(ckpt) if flip_tta is None else flip_tta
    # the temperature was fitted on the logits of the recipe's views: with TTA switched off it no longer applies
    temperature = temperature_of(ckpt) if flip == flip_tta_of(ckpt) else 1.0
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        write_onnx_copy(ckpt, tmp, flip, temperature)
        if not (folder / "answers.json").is_file():  # another process may have written it meanwhile
            shutil.rmtree(folder, ignore_errors=True)  # what the cache's clean-up left of an older copy
            tmp.replace(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"prepared {checkpoint} for ONNX Runtime in {time.perf_counter() - started:.0f} s (once: later calls "
          "start without PyTorch)", file=sys.stderr)
