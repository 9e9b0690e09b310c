import copy

import pytest
import torch

from petclassifier.errors import UserError
from petclassifier.models import build_model, fold_batchnorm


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
