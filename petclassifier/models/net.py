"""The network every model is: a body of feature stages and a head; scoring with the mirror image; BatchNorm folded
for passes that learn nothing."""

from __future__ import annotations

import torch
from torch import nn

from .kinds import KindFeatures

DROPOUT = 0.2  # before the linear classifier, where a model has no layers of its own there

class PetNet(nn.Module):
    """body: stages that turn pixels into feature maps; head: pool, dropout, linear layer to class scores."""

    def __init__(self, stages: list[nn.Module], num_features: int, num_classes: int, dropout: float = DROPOUT,
                 head: list[nn.Module] | None = None):
        super().__init__()
        self.body = nn.Sequential(*stages)
        # `head` replaces the default one with a torchvision model's own head layers
        self.head = nn.Sequential(*(head or [
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(num_features, num_classes)]))
        self.imagenet: nn.Module | None = None  # the pretrained ImageNet classifier riding along, frozen (or none)
        self.imagenet_tap = len(self.body)  # ... reading the body's features after this many stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # [B, 3, H, W] -> [B, C, h, w] -> [B, num_classes]

    def kind_features(self) -> KindFeatures | None:
        """The head's KindFeatures layer, where the head reads the kinds of animal ImageNet's classifier sees."""
        return next((m for m in self.head if isinstance(m, KindFeatures)), None)

    def knows_imagenet(self) -> bool:
        """Whether the model can say what ImageNet's classifier sees (it keeps it, or its head reads it)."""
        return self.imagenet is not None or self.kind_features() is not None

    def forward_with_imagenet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class scores, ImageNet class scores [B, 1000]) in one pass: both heads share the frozen stages."""
        kinds = self.kind_features()
        if kinds is not None:  # the head holds the ImageNet classifier itself, reading the pooled rows it reads
            features = self.body(x)
            return self.head(features), kinds.classifier(self.head[: list(self.head).index(kinds)](features))
        features = self.body[: self.imagenet_tap](x)
        return self.head(self.body[self.imagenet_tap :](features)), self.imagenet(features)

    def split(self, trainable_stages: int) -> tuple[nn.Sequential, nn.Sequential]:
        """(frozen, trainable): the first body stages, and the last `trainable_stages` stages plus the head."""
        k = 0 if trainable_stages < 0 else max(0, len(self.body) - trainable_stages)
        return self.body[:k], nn.Sequential(*self.body[k:], self.head)


def mean_over_flip(scores_of, x: torch.Tensor):
    """Test-time augmentation: `scores_of(x)` (a tensor or a tuple of them) averaged with the mirror images' scores."""
    both = scores_of(torch.cat([x, x.flip(-1)]))  # [2B, 3, H, W] in one pass
    if isinstance(both, tuple):
        return tuple(s.unflatten(0, (2, -1)).mean(0) for s in both)
    return both.unflatten(0, (2, -1)).mean(0)


class FlipAveraged(nn.Module):
    """A model whose scores for a photo are the mean of its scores for the photo and its mirror image."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_over_flip(self.model, x)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution just before it (in place; for inference only).

    The frozen or deployed network then computes the same function with a third fewer memory passes.
    """
    children = list(module.named_children())
    for (name, child), (next_name, nxt) in zip(children, children[1:]):
        if isinstance(child, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and not nxt.training:
            setattr(module, name, torch.nn.utils.fusion.fuse_conv_bn_eval(child, nxt))
            # timm's BatchNormAct2d carries its activation: keep it
            tail = [m for m in (getattr(nxt, "drop", None), getattr(nxt, "act", None)) if m is not None]
            setattr(module, next_name, nn.Sequential(*tail) if tail else nn.Identity())
    for child in module.children():
        fold_batchnorm(child)
    return module
