"""The refit pairs every train and validation photo with its own label.

After the epochs and the temperature are chosen, the head is trained again on the train and validation photos
together: their features are concatenated, and so are their labels. Here the two splits differ in size and in class
balance, so features and labels put together in different orders (validation first for one and not the other, or a
split's rows shuffled or shifted) pair photos with labels of the other class; red discs and blue squares make the
right pairing plain to see in the features.
"""

import importlib
import inspect

import torch

from petclassifier import PetClassifier, train

from .conftest import draw_photo

COUNTS = {"train": {"disc": 9, "square": 5}, "val": {"disc": 3, "square": 6}, "test": {"disc": 2, "square": 2}}
CLASSES = ["disc", "square"]  # the folder dataset's classes: its sub-folders in order


def make_unbalanced_folder(root):
    seed = 0
    for split, counts in COUNTS.items():
        for kind, count in counts.items():
            (root / split / kind).mkdir(parents=True)
            for i in range(count):
                draw_photo(root / split / kind / f"{kind}_{i}.png", kind, seed)
                seed += 1  # every photo its own
    return root


def test_the_refit_trains_each_photo_with_its_own_label(tmp_path, monkeypatch):
    data = make_unbalanced_folder(tmp_path / "shapes")
    module = importlib.import_module("petclassifier.training.finish")
    original, given = module.refit, []

    def recording_refit(*args, **kwargs):
        arguments = inspect.signature(original).bind(*args, **kwargs).arguments
        # epoch 0's view: every photo's plain centre crop
        given.append((arguments["inputs_of"](0)[:].float().cpu().clone(), arguments["labels"].cpu().clone()))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "refit", recording_refit)
    summary = train(dataset="folder", data_dir=str(data), model="efficientnet_lite2", image_size=64, epochs=15,
                    batch_size=8, lr=3e-2, augment_views=2, workers=0, cache_dir=str(tmp_path / "cache"),
                    out=str(tmp_path / "run"))
    assert summary["refit"] and len(given) == 1
    features, labels = given[0]
    per_class = [COUNTS["train"][kind] + COUNTS["val"][kind] for kind in CLASSES]
    assert len(features) == len(labels) == sum(per_class) and torch.bincount(labels).tolist() == per_class

    # each photo's features lie nearer the mean of the photos labelled as it is than of the others: one photo
    # paired with the other class's label would lie nearer the other mean
    features = features.flatten(1)
    means = torch.stack([features[labels == k].mean(0) for k in range(len(CLASSES))])
    nearest = torch.cdist(features, means).argmin(1)
    mispaired = (nearest != labels).nonzero().flatten().tolist()
    assert mispaired == [], f"rows paired with the other class's label: {mispaired}"

    # and the refit head, the one saved, tells every train and validation photo's class
    photos = sorted(p for split in ("train", "val") for p in (data / split).rglob("*.png"))
    classifier = PetClassifier.from_checkpoint(tmp_path / "run" / "best.pt", device="cpu")
    predicted = {str(p.relative_to(data)): entry.labels[0][0]
                 for p, entry in zip(photos, classifier.predict_paths(photos, workers=0))}
    assert predicted == {str(p.relative_to(data)): p.parent.name for p in photos}
