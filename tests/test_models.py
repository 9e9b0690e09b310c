import copy

import pytest
import torch

from petclassifier.errors import UserError
from petclassifier.insight.explain import GradCAM
from petclassifier.models.families import TORCHVISION_MODELS, family, torchvision_net, wrap_torchvision
from petclassifier.models.net import fold_batchnorm
from petclassifier.models.registry import build_model, model_names


@pytest.mark.parametrize("name", ["smallcnn", "efficientnet_lite0", "resnet18", "mobilenet_v3_small"])
def test_forward_shape_and_finite(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


def test_split_freezes_the_first_stages_and_keeps_the_function():
    model = build_model("efficientnet_lite0", 3).eval()
    frozen, trainable = model.split(2)
    assert len(frozen) == len(model.body) - 2
    assert trainable[-1] is model.head
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trainable(frozen(x)), model(x))
    assert len(model.split(-1)[0]) == 0 and len(model.split(0)[1]) == 1


def test_fold_batchnorm_is_the_same_function():
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 4).eval()
    for m in model.modules():  # non-trivial statistics so that a wrong fold would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model"):
        build_model("no_such_net", 2)


# The smallest model of each torchvision family (and variant built differently): CI stays fast, and every supported
# name belongs to one of these families, cut into stages and head by the same code.
WALKED = ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3", "mnasnet0_5",
          "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d",
          "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11", "wide_resnet50_2")


def test_every_torchvision_name_is_supported_or_refused_in_one_line():
    supported = [name for name in model_names() if name in TORCHVISION_MODELS]
    assert {family(name) for name in supported} == {family(name) for name in WALKED}
    refused = sorted(set(TORCHVISION_MODELS) - set(supported))
    assert refused == ["maxvit_t"] + [name for name in TORCHVISION_MODELS if name.startswith("vit_")]
    for name in refused:
        with pytest.raises(UserError, match=f"model {name} is not supported: .+; use a model such as resnet50") as e:
            build_model(name, 2)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", WALKED)
def test_torchvision_model_as_petnet_computes_the_same_function(name):
    torch.manual_seed(0)
    net = torchvision_net(name, pretrained=False).eval()
    for m in net.modules():  # non-trivial statistics, so that a wrong fold would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    size = 75 if name == "inception_v3" else 64  # the smallest input Inception-v3 takes
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = net(x)
        model = wrap_torchvision(name, net, 1000).eval()  # ImageNet head kept: the very same layers
        torch.testing.assert_close(model(x), expected)
        assert len(model.body) >= 3  # stages for --trainable-stages to count
        for k in (1, 2):
            frozen, trainable = model.split(k)
            torch.testing.assert_close(trainable(frozen(x)), expected)
        folded = fold_batchnorm(copy.deepcopy(model))(x)  # random Inception-v3 logits reach 1e7: relative error
        assert (folded - expected).abs().max() <= 1e-4 * expected.abs().max() + 1e-5
    cams, _ = GradCAM(model)(x)  # the last stage gives NCHW maps: square, coarser than the photo
    assert cams.shape[0] == 2 and cams.shape[1] == cams.shape[2] <= size // 8 and torch.isfinite(cams).all()
    pets = wrap_torchvision(name, net, 5).eval()
    with torch.no_grad():
        out = pets(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
