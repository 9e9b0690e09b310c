"""The packaged EfficientNet-Lite0 ImageNet weights must be mapped onto the right layers."""

import torch

from petclassifier.images import load_image
from petclassifier.models import build_model
from petclassifier.transforms import Preprocessing

from .conftest import SAMPLE

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = set(range(151, 269))


def top5(path):
    model = build_model("efficientnet_lite0", 1000, pretrained=True).eval()
    prep = Preprocessing.for_model("efficientnet_lite0", 224)
    x = prep.eval_batch(prep.square(load_image(path))[None])
    with torch.no_grad():
        return set(model(x).topk(5).indices[0].tolist())


def test_imagenet_head_sees_a_cat_in_a_cat_photo():
    assert top5(SAMPLE / "oxford-iiit-pet/images/Persian_2.jpg") & IMAGENET_CATS


def test_imagenet_head_sees_a_dog_in_a_dog_photo():
    assert top5(SAMPLE / "oxford-iiit-pet/images/pug_12.jpg") & IMAGENET_DOGS
