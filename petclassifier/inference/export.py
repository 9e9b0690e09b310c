"""Deployment: a checkpoint as a TorchScript or ONNX file plus a JSON sidecar, usable without this package.

The exported network is the evaluation model with every BatchNorm folded into its convolution, followed by the
calibration temperature and a softmax (with flip test-time augmentation, the logits are those of the photo and its
mirror image averaged, inside the network): it takes a normalised float32 batch [N, 3, crop, crop] (RGB, NCHW) and
returns class probabilities [N, num_classes], softmax(logits / T), as `PetClassifier` gives. The sidecar says how
to make that input from a photo and what the outputs mean.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..data.transforms import Preprocessing
from ..engine.backends import to_onnx
from ..errors import UserError
from ..models.checkpoint import flip_tta_of, load_checkpoint, model_from_checkpoint, temperature_of
from ..models.net import FlipAveraged, fold_batchnorm

FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}


class WithSoftmax(nn.Module):
    """The classifier, its logits divided by the calibration temperature, then a softmax over classes."""

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model, self.temperature = model, float(temperature)  # a constant in the traced graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) / self.temperature).softmax(dim=1)


def deployable(ckpt: dict) -> nn.Module:
    """The checkpoint's network in evaluation mode, BatchNorm folded, temperature and softmax included, on the CPU."""
    model, _ = model_from_checkpoint(ckpt)
    model = fold_batchnorm(model.eval())
    model.imagenet = None  # the "not a pet" head is not exported: the file gives class probabilities only
    return WithSoftmax(FlipAveraged(model) if flip_tta_of(ckpt) else model, temperature_of(ckpt)).eval()


def sidecar(ckpt: dict, fmt: str) -> dict:
    """What a program needs beside the model file: labels and the exact preprocessing."""
    prep = Preprocessing.from_dict(ckpt["preprocessing"])  # bicubic where a checkpoint predates `interpolation`
    return {
        "format": fmt,
        "model_file": FORMATS[fmt],
        "model_name": ckpt["model_name"],
        "task": ckpt.get("task"),
        "class_names": ckpt["class_names"],
        "species_of": ckpt.get("species_of") or {},
        "input": {"name": "image", "shape": ["batch", 3, prep.crop, prep.crop], "dtype": "float32",
                  "layout": "NCHW, RGB"},
        "output": {"name": "probabilities", "shape": ["batch", len(ckpt["class_names"])], "softmax_included": True,
                   "temperature_included": True, "flip_tta_included": flip_tta_of(ckpt)},
        "temperature": temperature_of(ckpt),  # the outputs are softmax(logits / temperature): calibrated
        "input_size": prep.crop,
        "resize": prep.resize,
        "interpolation": prep.interpolation,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "preprocessing": (f"resize the short side to {prep.resize} px ({prep.interpolation}), centre-crop "
                          f"{prep.crop} x {prep.crop}, scale to [0, 1], subtract mean and divide by std per channel"),
    }


def export(checkpoint: str | Path, fmt: str, out_dir: str | Path) -> Path:
    """Write `out_dir/model.pt` (TorchScript) or `model.onnx`, and `out_dir/model.json`; returns the model path."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    ckpt = load_checkpoint(checkpoint)
    model = deployable(ckpt)
    crop = ckpt["preprocessing"]["crop"]
    example = torch.zeros(2, 3, crop, crop)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FORMATS[fmt]
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():  # TorchScript's deprecation notice says nothing the user can act on
                warnings.simplefilter("ignore")
                torch.jit.save(torch.jit.trace(model, example), str(path))
        else:
            to_onnx(model, example, path, "image", ("probabilities",))
    (out_dir / "model.json").write_text(json.dumps(sidecar(ckpt, fmt), indent=2) + "\n")
    return path


def write_onnx_copy(ckpt: dict, folder: Path, flip_tta: bool, temperature: float) -> None:
    """The checkpoint's whole answer (petclassifier.inference.predict.Scoring) as `folder/model.onnx` and what turns its
    outputs into Predictions as `folder/answers.json`: what `predict` runs without PyTorch
    (petclassifier.inference.onnx_copy).
    """
    from .predict import PET_KINDS, Scoring

    model, prep = model_from_checkpoint(ckpt)
    species_of = ckpt.get("species_of")
    scoring = Scoring(model, prep, temperature, flip_tta, bool(species_of)).eval()
    with torch.no_grad():
        to_onnx(scoring, torch.zeros(2, 3, prep.resize, prep.resize, dtype=torch.uint8), folder / "model.onnx",
                "squares", ("probabilities", "pet"))
    answers = {"class_names": ckpt["class_names"], "species_of": species_of or {}, "task": ckpt.get("task"),
               "resize": prep.resize, "interpolation": prep.interpolation,
               "pet_below": PET_KINDS["cats and dogs" if species_of else "animals"][1]}
    (folder / "answers.json").write_text(json.dumps(answers) + "\n")
