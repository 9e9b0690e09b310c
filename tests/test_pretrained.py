"""The packaged EfficientNet-Lite0 ImageNet weights must be mapped onto the right layers: random or misplaced
weights would fail these checks, which ask for exact ImageNet classes, not one hit among many guesses."""

import pytest
import torch

from petclassifier.images import load_image
from petclassifier.models import build_model
from petclassifier.transforms import Preprocessing

from .conftest import SAMPLE

# Photos whose breed has its own ImageNet class (index in torchvision's ImageNet category list)
BREED_PHOTOS = {"Persian_2": 283, "Siamese_21": 284, "pug_12": 254, "beagle_14": 162, "basset_hound_102": 161,
                "boxer_19": 242, "chihuahua_16": 151, "japanese_chin_17": 152, "pomeranian_29": 259, "samoyed_17": 258}
CAT_PHOTOS = ("Abyssinian_15", "Bengal_3", "Birman_61", "Maine_Coon_1", "Ragdoll_47")  # breeds ImageNet lacks
DOG_PHOTOS = ("american_bulldog_14", "american_pit_bull_terrier_14", "havanese_67", "english_cocker_spaniel_1",
              "miniature_pinscher_2")
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = range(151, 269)


@pytest.fixture(scope="module")
def top1():
    model = build_model("efficientnet_lite0", 1000, pretrained=True).eval()
    prep = Preprocessing.for_model("efficientnet_lite0", 224)

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
