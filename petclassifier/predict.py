"""Inference: a trained classifier that ranks labels for photos, loaded from a checkpoint alone."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import load_checkpoint, model_from_checkpoint
from .errors import UserError
from .images import ImageError, is_photo_under, load_image
from .models import fold_batchnorm
from .train import autocast, resolve_device


@dataclass
class Prediction:
    """Ranked labels for one photo, with the species (cat or dog) when the model knows breeds."""

    path: str
    labels: list[tuple[str, float]] = field(default_factory=list)
    species: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        out = {"path": self.path, "predictions": [{"label": lab, "probability": p} for lab, p in self.labels]}
        if self.species:
            out["species"] = [{"label": lab, "probability": p} for lab, p in self.species]
        return out


class PetClassifier:
    """`PetClassifier.from_checkpoint("runs/x/best.pt").predict("photo.jpg")` -> [(label, probability), ...]."""

    def __init__(self, model: torch.nn.Module, class_names: list[str], preprocessing, species_of=None,
                 device: str = "auto"):
        self.device = resolve_device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.fast_model = fold_batchnorm(copy.deepcopy(self.model))  # same function, a third fewer memory passes
        self.class_names = class_names
        self.preprocessing = preprocessing
        self.species_of = species_of or {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> PetClassifier:
        ckpt = load_checkpoint(path)
        model, prep = model_from_checkpoint(ckpt)
        return cls(model, ckpt["class_names"], prep, ckpt.get("species_of"), device)

    @torch.inference_mode()
    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        """Class probabilities [N, num_classes] for decoded photos, through the evaluation transform."""
        x = torch.stack([self.preprocessing.square(img) for img in images]).to(self.device)
        with autocast(self.device):
            logits = self.fast_model(self.preprocessing.eval_batch(x))
        return logits.float().softmax(dim=1).cpu()

    def predict(self, image: str | Path | Image.Image, top_k: int = 5) -> list[tuple[str, float]]:
        """The `top_k` most likely labels for one photo (a path or a PIL image), most likely first."""
        img = image if isinstance(image, Image.Image) else self._load(image)
        return self.rank(self.probabilities([img])[0], top_k)

    def predict_paths(self, paths: list[str | Path], top_k: int = 5, batch_size: int = 32) -> list[Prediction]:
        """One Prediction per path, in order; a photo that cannot be read gets an error entry instead."""
        results = []
        for start in range(0, len(paths), batch_size):
            batch = [Prediction(str(p)) for p in paths[start : start + batch_size]]
            images = []
            for pred in batch:
                try:
                    images.append(self._load(pred.path))
                except ImageError as e:
                    pred.error = str(e)
            readable = [pred for pred in batch if pred.error is None]
            if readable:
                for pred, probs in zip(readable, self.probabilities(images)):
                    pred.labels = self.rank(probs, top_k)
                    pred.species = self.species(probs)
            results += batch
        return results

    def rank(self, probs: torch.Tensor, top_k: int) -> list[tuple[str, float]]:
        values, indices = probs.topk(min(top_k, len(self.class_names)))
        return [(self.class_names[i], round(v, 6)) for v, i in zip(values.tolist(), indices.tolist())]

    def species(self, probs: torch.Tensor) -> list[tuple[str, float]]:
        """Cat or dog: the summed probability of their breeds (empty for models that do not know breeds)."""
        if not self.species_of:
            return []
        totals: dict[str, float] = {}
        for name, p in zip(self.class_names, probs.tolist()):
            totals[self.species_of[name]] = totals.get(self.species_of[name], 0.0) + p
        return sorted(((k, round(v, 6)) for k, v in totals.items()), key=lambda kv: -kv[1])

    def _load(self, path: str | Path) -> Image.Image:
        return load_image(path, min_size=self.preprocessing.resize)


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, and the image files under each folder (hidden folders left out), recursively, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_photo_under(f, p))
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"no such file or folder: {p}")
    return out


def newest_checkpoint(runs_dir: str | Path = "runs") -> Path:
    found = sorted(Path(runs_dir).glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no --checkpoint given and no {runs_dir}/*/best.pt found; train a model first")
    return found[-1]
