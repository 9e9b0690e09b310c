"""The "not a pet" flag: the pretrained ImageNet classifier rides along with the new head and says when a photo
shows no pet. It must flag objects and scenes, leave pets alone, and survive a checkpoint round trip."""

import json

import pytest
import torch

from petclassifier.cli import main
from petclassifier.data.transforms import Preprocessing
from petclassifier.inference.predict import PetClassifier
from petclassifier.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from petclassifier.models.kinds import KIND_NAMES
from petclassifier.models.registry import build_model

from .conftest import SAMPLE, SHARED

NOT_PETS = SHARED / "not-pets"
PETS = sorted((SAMPLE / "oxford-iiit-pet" / "images").glob("*.jpg"))[::7][:16]  # cats and dogs of many breeds
SPECIES_OF = {"abyssinian": "cat", "beagle": "dog"}


def checkpoint_payload(model, task="breed", species_of=SPECIES_OF, imagenet_stages=1) -> dict:
    return {"model_name": "efficientnet_lite0", "class_names": ["abyssinian", "beagle"], "task": task,
            "species_of": species_of, "preprocessing": Preprocessing.for_model("efficientnet_lite0", 224).as_dict(),
            "model_state": model.state_dict(), "imagenet_stages": imagenet_stages}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A breed checkpoint of a pretrained Lite0 whose new head is untrained: the flag needs only the ImageNet head."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 2, pretrained=True, imagenet_stages=1)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(checkpoint_payload(model), path)
    return path


@pytest.mark.skipif(not NOT_PETS.is_dir(), reason=f"the not-pets photos are not at {NOT_PETS} (only beside a CI clone)")
def test_objects_and_scenes_are_flagged_and_pets_are_not(saved):
    classifier = PetClassifier.from_checkpoint(saved, device="cpu")
    objects = sorted(NOT_PETS.iterdir())[::10]  # 20 of the 199
    flagged = classifier.not_a_pet(objects)
    assert sum(flagged) >= 17, [p.name for p, f in zip(objects, flagged) if not f]
    assert not any(classifier.not_a_pet(PETS)), "a pet photo was flagged"


def test_the_flag_reaches_predict_output_and_a_model_without_imagenet_head_says_null(saved, tmp_path, capsys):
    photos = [str(PETS[0]), str(PETS[1])]
    assert main(["predict", "--checkpoint", str(saved), "--json", *photos]) == 0
    assert [e["not_a_pet"] for e in json.loads(capsys.readouterr().out)] == [False, False]

    torch.manual_seed(0)
    scratch = build_model("smallcnn", 2)
    ckpt = {**checkpoint_payload(scratch, imagenet_stages=None), "model_name": "smallcnn"}
    save_checkpoint(ckpt, tmp_path / "scratch.pt")
    assert main(["predict", "--checkpoint", str(tmp_path / "scratch.pt"), "--json", *photos]) == 0
    assert [e["not_a_pet"] for e in json.loads(capsys.readouterr().out)] == [None, None]
    assert PetClassifier.from_checkpoint(tmp_path / "scratch.pt", device="cpu").not_a_pet(PETS[0]) is None


def test_the_imagenet_head_is_the_pretrained_classifier_on_the_frozen_stages(saved):
    """Loaded from the checkpoint alone, forward_with_imagenet gives the new head's scores and exactly the scores of
    the untouched ImageNet network; the ImageNet copy is frozen."""
    model, prep = model_from_checkpoint(load_checkpoint(saved))
    imagenet = build_model("efficientnet_lite0", 1000, pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        scores, imagenet_scores = model.forward_with_imagenet(x)
        assert torch.allclose(scores, model(x), atol=1e-5)
        assert torch.allclose(imagenet_scores, imagenet(x), atol=1e-4)
    assert not any(p.requires_grad for p in model.imagenet.parameters())


def test_a_folder_model_counts_every_animal_as_a_pet():
    """A user's hamsters are pets: a folder model's flag uses all ImageNet animal classes, a breed model's cats and
    dogs only."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 2, pretrained=True, imagenet_stages=1)
    prep = Preprocessing.for_model("efficientnet_lite0", 224)
    breed = PetClassifier(model, ["abyssinian", "beagle"], prep, SPECIES_OF, device="cpu")
    folder = PetClassifier(model, ["cat", "dog"], prep, None, device="cpu")
    hamster, no_animal = KIND_NAMES.index("hamster"), KIND_NAMES.index("no animal")
    assert set(breed.scoring.pet_kinds) < set(folder.scoring.pet_kinds) and no_animal not in folder.scoring.pet_kinds
    assert hamster in folder.scoring.pet_kinds and hamster not in breed.scoring.pet_kinds


@pytest.mark.skipif(not NOT_PETS.is_dir(), reason=f"the not-pets photos are not at {NOT_PETS} (only beside a CI clone)")
def test_a_folder_model_flags_objects_and_not_pets():
    """The animal rule (every ImageNet animal class, below 0.2) of a model of a user's own folders, with the default
    backbone its threshold was chosen on (the default recipe: head only, so the ImageNet head reads the same maps)."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite2", 2, pretrained=True, imagenet_stages=0)
    folder = PetClassifier(model, ["cat", "dog"], Preprocessing.for_model("efficientnet_lite2", 260), None, "cpu")
    objects = sorted(NOT_PETS.iterdir())[5::10]  # 20 other photos than the breed test's
    assert sum(folder.not_a_pet(objects)) >= 16
    assert not any(folder.not_a_pet(PETS))


def chessboard(path):
    """A black and white board: no animal for the ImageNet head (it flags it), yet the new head sums to a species."""
    from PIL import Image, ImageDraw

    board = Image.new("RGB", (320, 320), "white")
    draw = ImageDraw.Draw(board)
    for i in range(64):
        if (i // 8 + i % 8) % 2:
            draw.rectangle([i // 8 * 40, i % 8 * 40, i // 8 * 40 + 39, i % 8 * 40 + 39], fill="black")
    board.save(path)
    return path


def test_a_photo_flagged_as_no_pet_gets_no_species(saved, tmp_path, capsys):
    """`not a pet? ... [cat 55.7%]` contradicts itself: a flagged photo's line and JSON name no cat or dog (the
    JSON keeps its key, null); a pet photo keeps its species."""
    board, pet = chessboard(tmp_path / "board.png"), str(PETS[0])
    assert main(["predict", "--checkpoint", str(saved), "--device", "cpu", "--json", str(board), pet]) == 0
    flagged, kept = json.loads(capsys.readouterr().out)
    assert flagged["not_a_pet"] is True and "species" in flagged and flagged["species"] is None
    assert kept["not_a_pet"] is False and {s["label"] for s in kept["species"]} == {"cat", "dog"}
    assert main(["predict", "--checkpoint", str(saved), "--device", "cpu", str(board), pet]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{board}: not a pet? ") and "[cat" not in lines[0] and "[dog" not in lines[0]
    assert lines[1].endswith("%]")  # the pet's species, as before
