"""Inference: a trained classifier that ranks labels for photos, loaded from a checkpoint alone."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..data.images import decoded_batches, load_image, readable, to_rgb, upright
from ..models.checkpoint import checkpoint_file, flip_tta_of, load_checkpoint, model_from_checkpoint, temperature_of
from ..models.kinds import KIND_NAMES, kind_probabilities
from ..models.net import PetNet, fold_batchnorm, mean_over_flip
from ..runtime import autocast, inference_batch_size, release_free_memory, resolve_device
from .answers import Labels, Prediction

Photo = str | Path | Image.Image
# "Not a pet": the kinds of animal (petclassifier.models.kinds) a pet photo falls in, and their summed probability below
# which a photo is flagged. A breed or species model counts cats and dogs (the 118 dog breeds and 5 domestic cats); a
# folder model, whose classes may be hamsters or parrots, every animal (ImageNet classes 0-397).
# Thresholds chosen with EfficientNet-Lite2 on the Oxford-IIIT Pet trainval photos (at most 1% flagged) and
# 199 photos of objects, food and scenes (README: "not a pet").
PET_KINDS = {"cats and dogs": (["cat", "dog"], 0.1), "animals": (KIND_NAMES[:-1], 0.2)}
WORKERS = 2  # decoding processes, as in training


class Scoring(nn.Module):
    """A photo's whole answer as one network: uint8 squares [N, 3, R, R] -> (calibrated class probabilities
    [N, num_classes], summed probability of the pet kinds [N], NaN where the model has no ImageNet head).

    What `PetClassifier` runs, and what a checkpoint's ONNX copy holds (petclassifier.inference.onnx_copy).
    """

    def __init__(self, model: PetNet, preprocessing, temperature: float, flip_tta: bool, cats_and_dogs: bool):
        super().__init__()
        self.model = fold_batchnorm(copy.deepcopy(model).eval())  # same function, a third fewer memory passes
        self.preprocessing, self.temperature, self.flip_tta = preprocessing, float(temperature), flip_tta
        self.pet_kinds = [KIND_NAMES.index(kind) for kind in PET_KINDS["cats and dogs" if cats_and_dogs else
                                                                        "animals"][0]]

    def forward(self, squares: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocessing.eval_batch(squares)
        with_imagenet = self.model.knows_imagenet()
        forward = self.model.forward_with_imagenet if with_imagenet else self.model
        out = mean_over_flip(forward, x) if self.flip_tta else forward(x)
        logits = out[0] if with_imagenet else out
        if with_imagenet:
            pet = kind_probabilities(out[1])[:, self.pet_kinds].sum(dim=1)
        else:
            pet = torch.full_like(logits[:, 0], float("nan"), dtype=torch.float32)
        return (logits.float() / self.temperature).softmax(dim=1), pet


class PetClassifier:
    """`PetClassifier.from_checkpoint("runs/x/best.pt").predict("photo.jpg")` -> [(label, probability), ...]."""

    def __init__(self, model: torch.nn.Module, class_names: list[str], preprocessing, species_of=None,
                 device: str = "auto", temperature: float = 1.0, flip_tta: bool = False):
        self.device = resolve_device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.class_names = class_names
        self.temperature = temperature  # calibration: probabilities are softmax(logits / temperature)
        self.flip_tta = flip_tta  # scores averaged with the mirror image's
        self.batch_size = inference_batch_size(self.device, flip_tta)  # photos per forward pass
        self.preprocessing = preprocessing
        self.labels = Labels(class_names, species_of)
        self.species_of = self.labels.species_of
        self.pet_below = PET_KINDS["cats and dogs" if species_of else "animals"][1]
        self.scoring = Scoring(self.model, preprocessing, temperature, flip_tta, bool(species_of))

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
        with autocast(self.device):
            probs, pet = self.scoring(squares.to(self.device))
        return probs.cpu(), [None if p != p else p < self.pet_below for p in pet.tolist()]  # NaN: cannot tell

    def predict(self, image: Photo | list[Photo], top_k: int = 5) -> list:
        """The `top_k` most likely labels, most likely first, for a photo (path or PIL image); for a list, a list."""
        if isinstance(image, (list, tuple)):
            return [self.labels.ranked(probs.tolist(), top_k) for probs, _ in self._each_output(image)]
        return self.predict([image], top_k)[0]

    def species(self, image: Photo | list[Photo]) -> list:
        """Cat or dog, most likely first, for a photo (path or PIL image); for a list, a list; [] for folder models."""
        if isinstance(image, (list, tuple)):
            return [self.labels.species(probs.tolist()) for probs, _ in self._each_output(image)]
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
        paths, batch_size, prep = [str(p) for p in paths], batch_size or self.batch_size, self.preprocessing
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        # the workers decode at most two batches each ahead of the network, and nothing is kept once yielded:
        # memory stays flat however many paths there are
        for names, decoded in zip(batches, decoded_batches(batches, prep.resize, prep.interpolation, workers)):
            yield from self.scored(names, decoded, top_k)
            release_free_memory()  # a stream over 100,000 photos stays at its starting size

    def scored(self, names: list[str], decoded: list, top_k: int = 5) -> list[Prediction]:
        """A decoded batch's Predictions (`decoded_batches` gives them): each name gets the reason its photo cannot be
        read, or its labels."""
        errors, squares = readable(decoded)
        outputs = self._square_outputs(torch.from_numpy(squares)) if squares is not None else (torch.empty(0), [])
        return self.labels.answers(names, errors, outputs[0].tolist(), outputs[1], top_k)

    def _each_output(self, images: list[Photo]):
        """Each photo's (class probabilities, "not a pet" flag), in order, a batch at a time."""
        for start in range(0, len(images), self.batch_size):
            yield from zip(*self._outputs([self._image(image) for image in images[start : start + self.batch_size]]))

    def _image(self, image: Photo) -> Image.Image:
        """A PIL image gets what the loader does to a file: turned upright from its EXIF, then made RGB."""
        return to_rgb(upright(image)) if isinstance(image, Image.Image) else self._load(image)

    def _load(self, path: str | Path) -> Image.Image:
        return load_image(path, min_size=self.preprocessing.resize)
