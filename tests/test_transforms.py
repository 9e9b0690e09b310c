import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from petclassifier.config import TrainConfig
from petclassifier.data.cache import decode_images
from petclassifier.data.images import centre_crop, load_image
from petclassifier.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

from .conftest import SAMPLE


def test_eval_batch_is_a_centre_crop_normalised():
    prep = Preprocessing.for_model("efficientnet_lite0", 224)
    assert prep.resize == 256
    x = torch.full((2, 3, 256, 256), 255, dtype=torch.uint8)
    x[..., 16:240, 16:240] = 0  # the centre crop sees only the black square
    out = prep.eval_batch(x)
    assert out.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out, torch.full_like(out, -1.0))  # (0 - 0.5) / 0.5


@pytest.mark.parametrize("side, crop", [(297, 260), (256, 224), (10, 3), (11, 3)])  # margins 37, 32, 7 (= 3 mod 4), 8
def test_one_centre_crop_for_squares_and_views_as_torchvision_takes_it(side, crop):
    """The network's view, the cached square's crop and torchvision's CenterCrop take the same pixels, also where
    half the margin ends in .5 (a floor and torchvision's rounding to even differ when the margin is 3 mod 4)."""
    x = torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8)
    expected = TF.center_crop(x, [crop, crop])
    torch.testing.assert_close(centre_crop(x, crop), expected)
    photo = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    assert np.array_equal(np.array(centre_crop(photo, crop)), expected[0].permute(1, 2, 0).numpy())


def test_train_batch_crops_every_photo_differently_and_reproducibly():
    prep = Preprocessing.for_model("smallcnn", 32)
    x = torch.randint(0, 256, (8, 3, prep.resize, prep.resize), dtype=torch.uint8)
    a = prep.train_batch(x, torch.Generator().manual_seed(0))
    b = prep.train_batch(x, torch.Generator().manual_seed(0))
    c = prep.train_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1.0 - 1e-5 and a.max() <= 1.0 + 1e-5


def test_torchvision_preprocessing_is_its_weights_own():
    """Resize side, crop, interpolation, mean and std as each model's ImageNet weights were evaluated."""
    assert Preprocessing.for_model("resnet50", 224) == Preprocessing(232, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    assert Preprocessing.for_model("convnext_tiny", 224) == Preprocessing(236, 224, IMAGENET_MEAN, IMAGENET_STD,
                                                                          "bilinear")
    assert Preprocessing.for_model("efficientnet_b3", 300) == Preprocessing(320, 300, IMAGENET_MEAN, IMAGENET_STD,
                                                                            "bicubic")
    assert Preprocessing.for_model("efficientnet_v2_l", 480).mean == (0.5, 0.5, 0.5)
    # another --image-size keeps the weights' resize / crop ratio
    assert Preprocessing.for_model("resnet50", 112).resize == round(112 * 232 / 224)
    assert Preprocessing.for_model("efficientnet_b3", 240).resize == 256
    # the package's own models keep their 0.875 bicubic rule
    assert Preprocessing.for_model("efficientnet_lite0", 224) == Preprocessing(256, 224, (0.5,) * 3, (0.5,) * 3)
    assert Preprocessing.for_model("smallcnn", 128).interpolation == "bicubic"


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b3"])
def test_a_photo_becomes_the_input_the_weights_own_transforms_make(name):
    weights_transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    prep = Preprocessing.for_model(name, weights_transforms.crop_size[0])
    for stem in ("Abyssinian_1", "Abyssinian_10"):  # a landscape and a portrait photo
        img = load_image(SAMPLE / "oxford-iiit-pet" / "images" / f"{stem}.jpg")
        torch.testing.assert_close(prep.eval_batch(prep.square(img)[None])[0], weights_transforms(img))


def test_default_image_size_is_the_weights_crop():
    assert TrainConfig(model="efficientnet_b3").resolved().image_size == 300
    assert TrainConfig(model="inception_v3").resolved().image_size == 299
    assert TrainConfig(model="resnet50").resolved().image_size == 224
    assert TrainConfig(model="efficientnet_b3", image_size=256).resolved().image_size == 256
    assert TrainConfig().resolved().image_size == 260 and TrainConfig(model="smallcnn").resolved().image_size == 128
    sizes = {n: TrainConfig(model=n).resolved().image_size for n in ("efficientnet_lite0", "efficientnet_lite1")}
    assert sizes == {"efficientnet_lite0": 224, "efficientnet_lite1": 240}  # each Lite's ImageNet resolution


def test_a_checkpoint_without_interpolation_loads_as_bicubic():
    old = {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert Preprocessing.from_dict(old).interpolation == "bicubic"
    prep = Preprocessing.for_model("resnet50", 224)
    assert Preprocessing.from_dict(prep.as_dict()) == prep


def test_the_resize_uses_the_interpolation_and_the_cache_keeps_them_apart(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
    img = load_image(path)
    bicubic = Preprocessing(48, 40, IMAGENET_MEAN, IMAGENET_STD)
    bilinear = Preprocessing(48, 40, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    expected = TF.pil_to_tensor(TF.center_crop(TF.resize(img, 48, interpolation=TF.InterpolationMode.BILINEAR), 48))
    assert torch.equal(bilinear.square(img), expected) and not torch.equal(bicubic.square(img), expected)
    cache = str(tmp_path / "cache")
    a, _ = decode_images([str(path)], bicubic, cache, workers=0)
    b, _ = decode_images([str(path)], bilinear, cache, workers=0)  # not the bicubic squares from the cache
    assert torch.equal(b[0], expected) and not torch.equal(a[0], b[0])
