"""Inference: a trained classifier that ranks labels for photos, loaded from a checkpoint alone."""

from __future__ import annotations

import copy
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import torch
from PIL import Image

from .cache import PhotoDecoder
from .checkpoint import checkpoint_file, flip_tta_of, load_checkpoint, model_from_checkpoint, temperature_of
from .errors import UserError
from .images import load_image, photos_under, to_rgb, upright
from .kinds import KIND_NAMES, kind_probabilities
from .models import fold_batchnorm, mean_over_flip
from .runtime import autocast, inference_batch_size, release_free_memory, resolve_device


@dataclass
class Prediction:
    """Ranked labels for one photo, with the species (cat or dog) for Oxford-IIIT Pet models."""

    path: str
    labels: list[tuple[str, float]] = field(default_factory=list)
    # reported only for a photo not flagged as no pet ("not a pet? ... [cat 55.7%]" contradicts itself): a flagged
    # one's JSON says null, so an Oxford model's entries always have the key (a folder model's never)
    species: list[tuple[str, float]] = field(default_factory=list)
    not_a_pet: bool | None = None  # None: the model has no ImageNet head to tell
    error: str | None = None

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        out = {"path": self.path, "predictions": [{"label": lab, "probability": p} for lab, p in self.labels],
               "not_a_pet": self.not_a_pet}
        if self.species:
            out["species"] = None if self.not_a_pet else [{"label": lab, "probability": p} for lab, p in self.species]
        return out

    def as_text(self) -> str:
        """One line: the labels, most likely first, and the likelier species; or the error."""
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        ranked = ", ".join(f"{label} {p:.1%}" for label, p in self.labels)
        species = f"  [{self.species[0][0]} {self.species[0][1]:.1%}]" if self.species and not self.not_a_pet else ""
        return f"{self.path}: {'not a pet? ' if self.not_a_pet else ''}{ranked}{species}"


Photo = str | Path | Image.Image
# "Not a pet": the kinds of animal (petclassifier.kinds) a pet photo falls in, and their summed probability below
# which a photo is flagged. A breed or species model counts cats and dogs (the 118 dog breeds and 5 domestic cats); a
# folder model, whose classes may be hamsters or parrots, every animal (ImageNet classes 0-397).
# Thresholds chosen with EfficientNet-Lite2 on the Oxford-IIIT Pet trainval photos (at most 1% flagged) and
# 199 photos of objects, food and scenes (README: "not a pet").
PET_KINDS = {"cats and dogs": (["cat", "dog"], 0.1), "animals": (KIND_NAMES[:-1], 0.2)}
WORKERS = 2  # decoding processes, as in training


class PetClassifier:
    """`PetClassifier.from_checkpoint("runs/x/best.pt").predict("photo.jpg")` -> [(label, probability), ...]."""

    def __init__(self, model: torch.nn.Module, class_names: list[str], preprocessing, species_of=None,
                 device: str = "auto", temperature: float = 1.0, flip_tta: bool = False):
        self.device = resolve_device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.fast_model = fold_batchnorm(copy.deepcopy(self.model))  # same function, a third fewer memory passes
        self.class_names = class_names
        self.temperature = temperature  # calibration: probabilities are softmax(logits / temperature)
        self.flip_tta = flip_tta  # scores averaged with the mirror image's
        self.batch_size = inference_batch_size(self.device, flip_tta)  # photos per forward pass
        self.preprocessing = preprocessing
        pet_kinds, self.pet_below = PET_KINDS["cats and dogs" if species_of else "animals"]
        self.pet_kinds = [KIND_NAMES.index(kind) for kind in pet_kinds]
        self.species_of = species_of or {}
        if self.species_of and set(class_names) <= set(self.species_of.values()):
            self.species_of = {name: name for name in class_names}  # a species model: each class is its own species

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", flip_tta: bool | None = None) -> PetClassifier:
        """A classifier from a checkpoint file, or from a run folder (its best.pt, else its last.pt); flip_tta None:
        as the checkpoint's recipe says (False halves the work per photo, for a little accuracy)."""
        return cls.from_loaded(load_checkpoint(checkpoint_file(path)), device, flip_tta)

    @classmethod
    def from_loaded(cls, ckpt: dict, device: str = "auto", flip_tta: bool | None = None) -> PetClassifier:
        """`from_checkpoint` for a checkpoint already read with `load_checkpoint`."""
        model, prep = model_from_checkpoint(ckpt)
        flip_tta = flip_tta_of(ckpt) if flip_tta is None else flip_tta
        return cls(model, ckpt["class_names"], prep, ckpt.get("species_of"), device, temperature_of(ckpt), flip_tta)

    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        """Calibrated class probabilities [N, num_classes] for decoded photos, through the evaluation transform."""
        return self._outputs(images)[0]

    def _outputs(self, images: list[Image.Image]) -> tuple[torch.Tensor, list]:
        return self._square_outputs(torch.stack([self.preprocessing.square(img) for img in images]))

    @torch.inference_mode()
    def _square_outputs(self, squares: torch.Tensor) -> tuple[torch.Tensor, list]:
        """(class probabilities [N, num_classes], each photo's "not a pet" flag or None) for uint8 squares
        [N, 3, R, R] as `Preprocessing.square` makes them."""
        with_imagenet = self.fast_model.knows_imagenet()
        forward = self.fast_model.forward_with_imagenet if with_imagenet else self.fast_model
        x = self.preprocessing.eval_batch(squares.to(self.device))
        with autocast(self.device):
            out = mean_over_flip(forward, x) if self.flip_tta else forward(x)
        if with_imagenet:
            logits, imagenet_logits = out
            pet = kind_probabilities(imagenet_logits)[:, self.pet_kinds].sum(dim=1)
            flags = (pet < self.pet_below).tolist()
        else:
            logits, flags = out, [None] * len(x)
        return (logits.float() / self.temperature).softmax(dim=1).cpu(), flags

    def predict(self, image: Photo | list[Photo], top_k: int = 5) -> list:
        """The `top_k` most likely labels, most likely first, for a photo (path or PIL image); for a list, a list."""
        if isinstance(image, (list, tuple)):
            return [self.rank(probs, top_k) for probs, _ in self._each_output(image)]
        return self.predict([image], top_k)[0]

    def species(self, image: Photo | list[Photo]) -> list:
        """Cat or dog, most likely first, for a photo (path or PIL image); for a list, a list; [] for folder models."""
        if isinstance(image, (list, tuple)):
            return [self._species(probs) for probs, _ in self._each_output(image)]
        return self.species([image])[0]

    def not_a_pet(self, image: Photo | list[Photo]) -> bool | None | list:
        """Whether the ImageNet head sees no pet in a photo (path or PIL image); for a list, a list; None when the
        model has no ImageNet head (a network trained from scratch)."""
        if isinstance(image, (list, tuple)):
            return [flag for _, flag in self._each_output(image)]
        return self.not_a_pet([image])[0]

    def predict_paths(self, paths: Sequence[str | Path], top_k: int = 5, workers: int = WORKERS,
                      batch_size: int | None = None) -> list[Prediction]:
        """One Prediction per path, in order; a photo that cannot be read gets an error entry instead."""
        return list(self.iter_predictions(paths, top_k, workers, batch_size))

    def iter_predictions(self, paths: Sequence[str | Path], top_k: int = 5, workers: int = WORKERS,
                         batch_size: int | None = None) -> Iterator[Prediction]:
        """`predict_paths` as a stream, each Prediction as soon as its batch is through; `workers` 0: decode here."""
        batch_size = batch_size or self.batch_size
        batches = math.ceil(len(paths) / batch_size)
        workers = min(workers, batches) if batches > 1 else 0  # starting processes for one batch only costs time
        # the workers decode at most two batches each (the DataLoader's prefetch) ahead of the network, and nothing
        # is kept once yielded: memory stays flat however many paths there are
        decoded = torch.utils.data.DataLoader(PhotoDecoder(_PathTable(paths), self.preprocessing),
                                              batch_size=batch_size, collate_fn=stack_readable, num_workers=workers)
        for names, errors, squares in decoded:
            yield from self.scored(names, errors, squares, top_k)
            release_free_memory()  # a stream over 100,000 photos stays at its starting size

    def scored(self, names: list[str], errors: list[str | None], squares: torch.Tensor | None,
               top_k: int = 5) -> list[Prediction]:
        """A decoded batch's Predictions, as `stack_readable` hands it over: each name gets its error, or the labels
        of the next of `squares` (uint8 [N, 3, R, R], the readable photos in order; None when none was readable)."""
        probs, flags = self._square_outputs(squares) if squares is not None else ((), ())
        outputs, out = zip(probs, flags), []
        for name, error in zip(names, errors):
            if error is not None:
                out.append(Prediction(name, error=error))
                continue
            p, flag = next(outputs)
            out.append(Prediction(name, self.rank(p, top_k), self._species(p), flag))
        return out

    def rank(self, probs: torch.Tensor, top_k: int) -> list[tuple[str, float]]:
        values, indices = probs.topk(min(top_k, len(self.class_names)))
        return [(self.class_names[i], round(v, 6)) for v, i in zip(values.tolist(), indices.tolist())]

    def _species(self, probs: torch.Tensor) -> list[tuple[str, float]]:
        """Cat or dog from one photo's class probabilities: the summed probability of each species' classes."""
        if not self.species_of:
            return []
        totals: dict[str, float] = {}
        for name, p in zip(self.class_names, probs.tolist()):
            totals[self.species_of[name]] = totals.get(self.species_of[name], 0.0) + p
        return sorted(((k, round(v, 6)) for k, v in totals.items()), key=lambda kv: -kv[1])

    def _each_output(self, images: list[Photo]):
        """Each photo's (class probabilities, "not a pet" flag), in order, a batch at a time."""
        for start in range(0, len(images), self.batch_size):
            yield from zip(*self._outputs([self._image(image) for image in images[start : start + self.batch_size]]))

    def _image(self, image: Photo) -> Image.Image:
        """A PIL image gets what the loader does to a file: turned upright from its EXIF, then made RGB."""
        return to_rgb(upright(image)) if isinstance(image, Image.Image) else self._load(image)

    def _load(self, path: str | Path) -> Image.Image:
        return load_image(path, min_size=self.preprocessing.resize)


class _PathTable:
    """The paths packed into one string and their end offsets, as a worker process reads them."""

    # a forked worker reading a list of strings updates each one's reference count, which copies their memory
    # pages into every worker; one string and one array are two objects however many paths there are

    def __init__(self, paths: Sequence[str | Path]):
        names = [str(p) for p in paths]
        self.text, self.ends = "".join(names), array("q", accumulate(map(len, names), initial=0))

    def __len__(self) -> int:
        return len(self.ends) - 1

    def __getitem__(self, i: int) -> str:
        return self.text[self.ends[i] : self.ends[i + 1]]


def stack_readable(items: list[tuple[str, torch.Tensor | str]]) -> tuple[list[str], list, torch.Tensor | None]:
    """A batch of decoded photos (in the worker): its paths, each one's error or None, the read squares stacked."""
    errors = [x if isinstance(x, str) else None for _, x in items]
    squares = [x for _, x in items if not isinstance(x, str)]
    return [path for path, _ in items], errors, torch.stack(squares) if squares else None


def expand_paths(paths: list[str], missing_ok: bool = False) -> list[Path]:
    """Files as given, and the image files under each folder (hidden folders left out), recursively, sorted.

    A path that does not exist is an error, or with `missing_ok` kept in its place for the caller to report.
    """
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(map(Path, photos_under(p)))
        elif p.exists() or missing_ok:
            out.append(p)
        else:
            raise UserError(f"no such file or folder: {p}")
    return out


def newest_checkpoint(runs_dir: str | Path = "runs") -> Path:
    found = sorted(Path(runs_dir).glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no --checkpoint given and no {runs_dir}/*/best.pt found; train a model first")
    return found[-1]
