"""Preprocessing and augmentation, defined once for training, evaluation and prediction.

Photos are decoded once into uint8 squares (short side resized to `resize`, centre-cropped); everything after
that runs on batches of tensors on the training device, so a GPU never waits for per-image Python work.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from PIL import Image
from torchvision.ops import roi_align

from ..config import OWN_MODELS, weights_transforms
from .images import centre_crop, square_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.25, 1.0)  # random resized crop: share of the square's area kept
CROP_RATIO = (3 / 4, 4 / 3)  # and its aspect-ratio range
FLIP_CHANCE = 0.5  # of a random view being mirrored


def augmentation_key() -> str:
    """The constants that shape a random view, for the keys of cached features."""
    return f"crop scale {CROP_SCALE}, ratio {CROP_RATIO}, flip {FLIP_CHANCE}"


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes a network input; saved in every checkpoint so prediction matches training."""

    resize: int  # short side after resizing, before the centre crop
    crop: int  # side of the square the network sees
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # of the resize: bicubic or bilinear (checkpoints without it were bicubic)

    @classmethod
    def for_model(cls, model_name: str, image_size: int) -> Preprocessing:
        """A torchvision model's preprocessing is its weights' own, its resize scaled by image_size / their crop."""
        preset = weights_transforms(model_name)
        if preset is None:  # EfficientNet-Lite's TensorFlow weights expect [-1, 1] inputs (and smallcnn learns them)
            mean, std = ((0.5,) * 3, (0.5,) * 3) if model_name in OWN_MODELS else (IMAGENET_MEAN, IMAGENET_STD)
            return cls(resize=round(image_size / 0.875), crop=image_size, mean=mean, std=std)
        resize = round(image_size * preset.resize_size[0] / preset.crop_size[0])
        return cls(resize, image_size, tuple(preset.mean), tuple(preset.std), preset.interpolation.value)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(d["resize"], d["crop"], tuple(d["mean"]), tuple(d["std"]), d.get("interpolation", "bicubic"))

    def as_dict(self) -> dict:
        return asdict(self)

    def square(self, img: Image.Image) -> torch.Tensor:
        """A decoded photo as the uint8 square that the cache stores: [3, resize, resize]."""
        return torch.from_numpy(square_uint8(img, self.resize, self.interpolation))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float 0-255) [B, 3, H, W] -> float, standardised per channel."""
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255
        return (x.float() - mean) / std

    def eval_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Centre crop and normalise a uint8 batch [B, 3, R, R] -> [B, 3, crop, crop]."""
        return self.normalize(centre_crop(x, self.crop)).contiguous(memory_format=torch.channels_last)

    def mirrored_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The centre crop's mirror image: the second view flip test-time augmentation scores."""
        return self.eval_batch(x).flip(-1)

    def train_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random resized crop and horizontal flip of a uint8 batch, every photo its own crop, in one call."""
        n, side = x.shape[0], x.shape[-1]
        area = side * side * torch.empty(n).uniform_(*CROP_SCALE, generator=generator)
        log_ratio = torch.empty(n).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=generator)
        w = (area * log_ratio.exp()).sqrt().clamp(max=side)
        h = (area / log_ratio.exp()).sqrt().clamp(max=side)
        x0 = torch.rand(n, generator=generator) * (side - w)
        y0 = torch.rand(n, generator=generator) * (side - h)
        boxes = torch.stack([torch.arange(n, dtype=torch.float), x0, y0, x0 + w, y0 + h], dim=1).to(x.device)
        # roi_align resamples each box to crop x crop, one bilinear sample per output pixel: a box is at most
        # resize/crop = 1.14x the output's side, so there is nothing to average (4 samples cost 4x the time).
        out = roi_align(x.float(), boxes, output_size=self.crop, sampling_ratio=1, aligned=True)
        flip = (torch.rand(n, generator=generator) < FLIP_CHANCE).to(x.device)
        out = torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)  # no boolean indexing: no GPU sync
        return self.normalize(out).contiguous(memory_format=torch.channels_last)
