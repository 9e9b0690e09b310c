"""Kinds of animal: ImageNet's classes grouped into cat, dog, ..., no animal, and a head that reads them beside the
pooled features; built, checkpointed and rebuilt from the checkpoint alone."""

import torch
from torch import nn

from petclassifier.config import TrainConfig
from petclassifier.data.transforms import Preprocessing
from petclassifier.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from petclassifier.models.kinds import (
    FLOOR,
    KIND_NAMES,
    KINDS,
    SCALE,
    KindFeatures,
    KindInputs,
    kind_of_class,
    kind_probabilities,
)
from petclassifier.models.registry import build_model

from .conftest import SAMPLE


def test_every_imagenet_class_has_one_kind_and_the_kinds_do_not_overlap():
    ids = [i for members in KINDS.values() for i in members]
    assert len(ids) == len(set(ids)) and all(0 <= i < 398 for i in ids)  # pets are among ImageNet's animals
    kind = kind_of_class()
    assert kind.shape == (1000,) and set(kind.tolist()) == set(range(len(KIND_NAMES)))
    assert KIND_NAMES[kind[207]] == "dog" and KIND_NAMES[kind[283]] == "cat"  # golden retriever, Persian cat
    assert KIND_NAMES[kind[333]] == "hamster" and KIND_NAMES[kind[291]] == "other animal"  # a lion is no cat here
    assert KIND_NAMES[kind[500]] == "no animal"


def test_kind_probabilities_sum_the_classes_of_each_kind():
    logits = torch.full((2, 1000), -30.0)
    logits[0, 151], logits[0, 268] = 0.0, 0.0  # two dog breeds, equally likely
    logits[1, 999] = 0.0
    p = kind_probabilities(logits)
    assert p.shape == (2, len(KIND_NAMES)) and torch.allclose(p.sum(1), torch.ones(2))
    assert p[0, KIND_NAMES.index("dog")] > 0.999 and p[1, KIND_NAMES.index("no animal")] > 0.999


def test_kind_features_append_scaled_floored_log_probabilities_and_learn_nothing():
    classifier = nn.Linear(8, 1000)
    kinds = KindFeatures(classifier, dropout=0.5).eval()
    rows = torch.randn(3, 8)
    out = kinds(rows)
    assert out.shape == (3, 8 + len(KIND_NAMES)) and torch.equal(out[:, :8], rows)
    expected = SCALE * kind_probabilities(classifier(rows)).clamp_min(FLOOR).log()
    assert torch.allclose(out[:, 8:], expected)
    assert out[:, 8:].min() >= SCALE * torch.log(torch.tensor(FLOOR)) - 1e-5
    assert not any(p.requires_grad for p in kinds.parameters())
    kinds.train()  # dropout touches the features, never the kinds: a dropped kind would read "certainly not"
    torch.manual_seed(0)
    trained = kinds(rows)
    assert torch.allclose(trained[:, 8:], expected) and (trained[:, :8] == 0).any()


def test_kind_inputs_are_the_head_on_rows_whose_kinds_were_computed_once():
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), KindFeatures(nn.Linear(8, 1000), dropout=0.5),
                         nn.Linear(8 + len(KIND_NAMES), 3))
    fast, features = KindInputs(head), torch.randn(5, 8, 1, 1)
    rows = fast.rows(features)  # what a view holds: the features and their kinds, in the features' dtype
    assert rows.shape == (5, 8 + len(KIND_NAMES)) and not rows.requires_grad
    head.eval()
    assert torch.allclose(fast(rows), head(features), atol=1e-5) and torch.allclose(fast(features), head(features))
    head.train()  # dropout draws alike: the same photo dropped alike either way
    torch.manual_seed(0)
    slow = head(features)
    torch.manual_seed(0)
    assert torch.allclose(fast(rows), slow, atol=1e-5)
    fast(rows).sum().backward()  # it trains the head's own linear layer, and nothing of the classifier
    assert head[-1].weight.grad is not None and head[2].classifier.weight.grad is None
    assert [n for n, p in fast.named_parameters() if p.requires_grad] == ["linear.weight", "linear.bias"]
    half = fast.rows(features.half())  # views are kept in half precision: the kinds too, to 0.02 of their -69..0
    assert half.dtype == torch.float16 and torch.allclose(half.float(), rows, atol=0.05)


def test_config_turns_kinds_on_only_where_a_pretrained_head_alone_learns():
    assert TrainConfig().resolved().kinds is True
    assert TrainConfig(pretrained=False).resolved().kinds is False
    assert TrainConfig(trainable_stages=1).resolved().kinds is False
    assert TrainConfig(model="smallcnn").resolved().kinds is False
    assert TrainConfig(kinds=False).resolved().kinds is False


def test_a_head_with_kinds_round_trips_through_its_checkpoint_and_sees_what_imagenet_sees(tmp_path):
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 3, pretrained=True, imagenet_stages=0, kinds=True).eval()
    assert model.kind_features() is not None and model.imagenet is None and model.knows_imagenet()
    assert model.head[-1].in_features == 1280 + len(KIND_NAMES)
    imagenet = build_model("efficientnet_lite0", 1000, pretrained=True).eval()
    path = tmp_path / "best.pt"
    save_checkpoint({"model_name": "efficientnet_lite0", "class_names": ["a", "b", "c"], "task": "folder",
                     "preprocessing": Preprocessing.for_model("efficientnet_lite0", 224).as_dict(),
                     "model_state": model.state_dict(), "imagenet_stages": 0, "kinds": True}, path)
    rebuilt, _ = model_from_checkpoint(load_checkpoint(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        scores, imagenet_scores = rebuilt.forward_with_imagenet(x)
        assert torch.allclose(scores, model(x), atol=1e-5)
        assert torch.allclose(imagenet_scores, imagenet(x), atol=1e-4)


def test_heads_of_other_shapes_and_fine_tuned_models_keep_their_plain_head():
    fine_tuned = build_model("efficientnet_lite0", 2, pretrained=True, imagenet_stages=1, kinds=True)
    assert fine_tuned.kind_features() is None and fine_tuned.imagenet is not None
    vgg = build_model("vgg11", 2, pretrained=False, imagenet_stages=0, kinds=True)  # hidden layers of its own
    assert vgg.kind_features() is None and vgg.imagenet is not None


def test_the_pretrained_classifier_sees_the_kind_of_pet_in_real_photos():
    """One photo of each of the 37 breeds in the bundled sample (cat breeds are capitalised): Lite0 calls 4 cats
    (Abyssinian_1, Bombay_1, Russian_Blue_10, Sphynx_15) dogs, an all-dog or coin-flip classifier 12-25 of 37 wrong."""
    from PIL import Image

    model = build_model("efficientnet_lite0", 2, pretrained=True, imagenet_stages=0, kinds=True).eval()
    prep = Preprocessing.for_model("efficientnet_lite0", 224)
    first = {}
    for path in sorted((SAMPLE / "oxford-iiit-pet" / "images").glob("*.jpg")):
        first.setdefault(path.stem.rsplit("_", 1)[0], path)
    photos = list(first.values())
    x = prep.eval_batch(torch.stack([prep.square(Image.open(p).convert("RGB")) for p in photos]))
    with torch.no_grad():
        _, imagenet_scores = model.forward_with_imagenet(x)
    seen = [KIND_NAMES[k] for k in kind_probabilities(imagenet_scores).argmax(1)]
    truth = ["cat" if p.name[0].isupper() else "dog" for p in photos]
    right = sum(s == t for s, t in zip(seen, truth))
    assert len(photos) == 37 and right >= 32, [(p.name, s) for p, s, t in zip(photos, seen, truth) if s != t]


def test_a_run_saved_before_kinds_existed_resumes_without_them(tmp_path):
    """Its config.json has no `kinds`, and its head none: resumed, the head is rebuilt as it was."""
    from dataclasses import asdict

    from petclassifier.training.resilience import resume_config

    before = asdict(TrainConfig(epochs=2).resolved())
    del before["kinds"]
    state = {"model_name": "efficientnet_lite0", "class_names": ["a", "b"], "preprocessing": {}, "model_state": {},
             "epoch": 1, "optimizer": {}, "ranks": []}
    save_checkpoint({**state, "config": before}, tmp_path / "last.pt")
    assert resume_config(TrainConfig(resume=str(tmp_path)), set()).kinds is False
    save_checkpoint({**state, "config": {**before, "kinds": True}, "kinds": True}, tmp_path / "last.pt")
    assert resume_config(TrainConfig(resume=str(tmp_path)), set()).kinds is True
