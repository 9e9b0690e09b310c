"""Every command on every dataset kind and every model family, end to end, as a user runs them.

Three scenarios cover the matrix in a Latin square: each dataset kind (Oxford breeds, Oxford species, a user's
3-class folder) and each model family (the default pretrained EfficientNet-Lite2 on its fast path, with its refit
and flip test-time augmentation; a torchvision network from scratch; smallcnn) appears once, and each scenario runs
train, predict (text and JSON), evaluate, explain, export, serve (its API), and an interrupted training resumed with
`--resume RUN_DIR` alone. Tiny real photos, one or two epochs.
"""

import importlib
import json
import os
import signal

import matplotlib  # noqa: F401  (explain draws its pictures with it: the dev extra installs it)
import pytest
import torch
from starlette.testclient import TestClient  # the web extra's server, in the dev extra with httpx for this client

from petclassifier import PetClassifier
from petclassifier.cli import main
from petclassifier.models.checkpoint import load_checkpoint
from petclassifier.web.app import create_app
from petclassifier.web.service import PhotoService

from .conftest import LOCAL, make_tiny_oxford
from .nested import approx_nested

# the breeds make_tiny_oxford copies, and their species
SPECIES = {"abyssinian": "cat", "bengal": "cat", "beagle": "dog", "pug": "dog"}
# photos the Oxford scenarios predict: ones the pretrained ImageNet network sees as a cat or dog even at 64 pixels
# (pet probability above 0.99), so the "not a pet" flag of a pretrained model is False for each; not sorted, to
# show the answers keep the order given
OXFORD_PHOTOS = ("beagle_1.jpg", "Abyssinian_12.jpg", "Bengal_12.jpg")


def make_three_classes(root):
    """A user's folder of three pet classes (bundled photos), with train/ and test/ sub-folders."""
    from PIL import Image

    from .conftest import SAMPLE

    for name, breed in (("cat", "Bengal"), ("dog", "pug"), ("hamster", "Abyssinian")):  # any three classes will do
        photos = sorted((SAMPLE / "oxford-iiit-pet" / "images").glob(f"{breed}_*.jpg"))[:8]
        for i, photo in enumerate(photos):
            folder = root / ("test" if i >= 6 else "train") / name
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.open(photo).convert("RGB")
            img.thumbnail((192, 192))
            img.save(folder / f"{name}_{i}.jpg")
    return root


SCENARIOS = {
    "oxford-breed-default": (["--dataset", "oxford-iiit-pet", "--task", "breed", "--augment-views", "2",
                              "--image-size", "64"], 4),
    "oxford-species-resnet18": (["--dataset", "oxford-iiit-pet", "--task", "species", "--model", "resnet18",
                                 "--no-pretrained", "--image-size", "64"], 2),
    "folder-smallcnn": (["--dataset", "folder", "--model", "smallcnn", "--image-size", "48", "--flip-tta"], 3),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return {"oxford": make_tiny_oxford(root / "oxford"), "folder": make_three_classes(root / "my_pets")}


def interrupt_in_epoch_2(monkeypatch):
    """Press Ctrl-C (SIGINT to this process) as the second epoch starts, as a user at the terminal would."""
    module = importlib.import_module("petclassifier.training.epochs")
    one_epoch, calls = module.train_one_epoch, []

    def press_ctrl_c_then_train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return one_epoch(*args, **kwargs)

    monkeypatch.setattr(module, "train_one_epoch", press_ctrl_c_then_train)


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_command_on_this_dataset_and_model(name, datasets, tmp_path, monkeypatch, capsys):
    flags, num_classes = SCENARIOS[name]
    kind = "folder" if name.startswith("folder") else "oxford"
    data_dir, run_dir = datasets[kind], tmp_path / "run"
    common = ["--data-dir", str(data_dir), "--epochs", "2", "--batch-size", "4", "--workers", "0",
              "--cache-dir", str(tmp_path / "cache")]

    # train, interrupted by Ctrl-C in epoch 2, then resumed with nothing but the run folder
    interrupt_in_epoch_2(monkeypatch)
    assert main(["train", *flags, *common, "--out", str(run_dir)]) == 130
    said = capsys.readouterr()
    assert f"continue with --resume {run_dir}" in said.out
    assert (said.out + said.err).count("interrupted") == 1  # said once, with where it stopped and how to go on
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_dir)]) == 0
    said = capsys.readouterr().out
    assert "resumed from" in said and "after step 1 of epoch 2" in said
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["refit"] == (name == "oxford-breed-default")  # the head-only model with a test split
    ckpt = load_checkpoint(run_dir / "best.pt")
    class_names = ckpt["class_names"]
    assert len(class_names) == num_classes and summary["photos"]["test"] > 0
    task = {"oxford-breed": "breed", "oxford-species": "species"}.get(name.rsplit("-", 1)[0], "folder")
    assert ckpt["task"] == task and ckpt["config"]["data_dir"] == str(data_dir)

    # predict: text and JSON, the same labels and in the order given; cat or dog for Oxford models only
    if kind == "oxford":
        photos = [data_dir / "oxford-iiit-pet" / "images" / photo for photo in OXFORD_PHOTOS]
    else:
        photos = sorted((data_dir / "test").rglob("*.jpg"))[:3]
    assert all(p.is_file() for p in photos)
    assert main(["predict", "--checkpoint", str(run_dir), "--json", *map(str, photos)]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["path"] for e in entries] == list(map(str, photos))
    classifier = PetClassifier.from_checkpoint(run_dir, device="cpu")
    for entry, photo in zip(entries, photos):
        ranked = [(p["label"], p["probability"]) for p in entry["predictions"]]
        assert len(ranked) == min(5, num_classes)
        assert [label for label, _ in ranked] == [label for label, _ in classifier.predict(photo)]
        probabilities = [p for _, p in ranked]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-5
        # the ImageNet head of a pretrained model sees the pet in each photo; a network trained from scratch has no
        # ImageNet head to tell (None)
        assert entry["not_a_pet"] is (False if name == "oxford-breed-default" else None)
        assert (ckpt["imagenet_stages"] is not None) == (name == "oxford-breed-default")
        species = [s["label"] for s in entry.get("species", [])]
        if kind == "oxford":
            assert sorted(species) == ["cat", "dog"]
            if task == "species":
                assert entry["species"][0]["label"] == ranked[0][0]
        else:
            assert species == []
    assert main(["predict", "--checkpoint", str(run_dir), str(photos[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{photos[0]}: {entries[0]['predictions'][0]['label']} ")  # no "not a pet?": a pet
    assert ("[cat " in line or "[dog " in line) == (kind == "oxford")

    # evaluate on the test split; the report agrees with the training run's own test score
    report_path = tmp_path / "report.json"
    assert main(["evaluate", "--checkpoint", str(run_dir), "--json", str(report_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["photos"] == summary["photos"]["test"]
    assert report["top1"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert ("top-5" in printed) == (num_classes > 5)

    # explain: Grad-CAM pictures for each photo
    assert main(["explain", "--checkpoint", str(run_dir), "--out", str(tmp_path / "explain"), str(photos[0])]) == 0
    assert (tmp_path / "explain" / f"{photos[0].stem}_gradcam.png").is_file()
    capsys.readouterr()

    # export: the TorchScript file gives the probabilities the classifier gives
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "export")]) == 0
    exported = torch.jit.load(str(tmp_path / "export" / "model.pt"))
    meta = json.loads((tmp_path / "export" / "model.json").read_text())
    assert meta["class_names"] == class_names and meta["task"] == task
    image = classifier._load(photos[0])
    x = classifier.preprocessing.eval_batch(classifier.preprocessing.square(image)[None]).contiguous()
    with torch.no_grad():
        assert torch.allclose(exported(x), classifier.probabilities([image]), atol=1e-4)

    # serve: the web API answers as predict --json did, explains with Grad-CAM and describes the run
    client = TestClient(create_app(PhotoService(run_dir / "best.pt", device="cpu")), base_url=LOCAL)
    answered = client.post("/api/predict", files=[("file", (p.name, p.read_bytes())) for p in photos]).json()
    for got, want in zip(answered, entries, strict=True):
        assert {**got, "path": None} == approx_nested({**want, "path": None}, abs=1e-5)
    overlay = client.post("/api/explain", files=[("file", (photos[0].name, photos[0].read_bytes()))])
    assert overlay.status_code == 200 and overlay.headers["x-class"] == entries[0]["predictions"][0]["label"]
    info = client.get("/api/model").json()
    assert info["task"] == task and info["class_names"] == class_names and len(info["curve"]) == 2
    assert info["accuracy"]["value"] == pytest.approx(summary["test_accuracy"])
