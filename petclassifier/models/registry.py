"""The model registry: every network is a body of feature stages (NCHW feature maps) and a head that classifies them."""

from __future__ import annotations

import difflib

from torch import nn

from ..config import LITE_SIZES, OWN_MODELS
from ..errors import UserError
from .families import TORCHVISION_MODELS, efficientnet_lite, family, small_cnn, torchvision_net, wrap_torchvision
from .kinds import kind_head
from .net import PetNet

REFUSED = {
    "vit_": "a vision transformer classifies its class token, not feature maps, and takes one input size only",
    "maxvit": "its attention grid is laid out for 224 px inputs only",
}
EXAMPLES = "resnet50, convnext_tiny, efficientnet_b0, densenet121 or swin_t"


def model_names() -> list[str]:
    """Every name `--model` accepts."""
    return list(OWN_MODELS) + [name for name in TORCHVISION_MODELS if family(name)]


def build_model(name: str, num_classes: int, pretrained: bool = False, imagenet_stages: int | None = None,
                kinds: bool = False) -> PetNet:
    """A registry model with a fresh `num_classes` head (the ImageNet one is kept when num_classes is 1000).

    With `imagenet_stages`, the model also keeps its ImageNet classifier, with its own copy of that many last body
    stages (the ones training changes), so it reads the frozen stages' features as it did in ImageNet training.
    With `kinds` too, and nothing but the head training (`imagenet_stages` 0), the head reads that classifier's kinds
    of animal beside the pooled features (KindFeatures), where the head is a plain pool and linear layer.
    """
    model = registry_model(name, num_classes, pretrained)
    if imagenet_stages is not None:
        original = registry_model(name, 1000, pretrained)
        with_kinds = kind_head(model.head, original.head, num_classes) if kinds and imagenet_stages == 0 else None
        if with_kinds is not None:
            model.head = with_kinds
            return model
        tap = max(0, len(original.body) - imagenet_stages)
        model.imagenet = nn.Sequential(*original.body[tap:], original.head).requires_grad_(False).eval()
        model.imagenet_tap = tap
    return model


def registry_model(name: str, num_classes: int, pretrained: bool) -> PetNet:
    """The model `name` with a `num_classes` head."""
    if name == "smallcnn":
        return small_cnn(num_classes)
    if name in LITE_SIZES:
        return efficientnet_lite(name, num_classes, pretrained)
    check_model_name(name)
    return wrap_torchvision(name, torchvision_net(name, pretrained), num_classes)


def check_model_name(name: str) -> None:
    """UserError, in one line, for a name `--model` does not take (checked before any photo is listed)."""
    if name in OWN_MODELS:
        return
    if name in TORCHVISION_MODELS:
        why = next((why for prefix, why in REFUSED.items() if name.startswith(prefix)), None)
        if why is None and family(name) is None:
            why = "this package does not know how to cut it into feature stages and a head"
        if why:
            raise UserError(f"model {name} is not supported: {why}; use a model such as {EXAMPLES}")
        return
    close = difflib.get_close_matches(name, model_names(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"unknown model {name!r}{hint}; choose efficientnet_lite0/1/2, smallcnn or a torchvision model "
                    f"such as {EXAMPLES}")


