import json
import sys
from dataclasses import asdict

import pytest
import torch

from petclassifier import PetClassifier, train
from petclassifier.cli import main
from petclassifier.config import TrainConfig
from petclassifier.data.datasets import load_data
from petclassifier.data.images import load_image
from petclassifier.data.transforms import Preprocessing
from petclassifier.engine.metrics import (
    confusion_matrix,
    expected_calibration_error,
    mean_class_accuracy,
    metrics_report,
    per_class_metrics,
)
from petclassifier.errors import UserError
from petclassifier.insight.evaluate import eval_config, evaluate_checkpoint, match_classes
from petclassifier.models.checkpoint import load_checkpoint, save_checkpoint
from petclassifier.models.registry import build_model
from petclassifier.training.curves import write_curves

from .conftest import draw_photo, make_folder, make_tiny_oxford
from .test_train import TINY

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny disc/square classifier with train/val/test folders."""
    root = tmp_path_factory.mktemp("eval")
    data = make_folder(root / "shapes", per_class=8, splits=("train", "val", "test"))
    out = root / "run"
    train(**TINY, data_dir=str(data), cache_dir=str(root / "cache"), out=str(out))
    return data, out


@pytest.fixture(scope="module")
def breeds(tmp_path_factory):
    """An untrained smallcnn over the bundled sample's 37 breeds, saved with their species as training does."""
    path = tmp_path_factory.mktemp("breeds") / "best.pt"
    data = load_data(TrainConfig())
    torch.manual_seed(0)
    save_checkpoint({"model_name": "smallcnn", "class_names": data.class_names, "task": "breed",
                     "species_of": data.species_of, "preprocessing": Preprocessing.for_model("smallcnn", 32).as_dict(),
                     "model_state": build_model("smallcnn", 37, pretrained=False).state_dict(),
                     "config": asdict(TrainConfig(model="smallcnn", image_size=32, workers=0))}, path)
    return path


def scored(checkpoint, tmp_path, *args) -> dict:
    """The JSON report of a successful `evaluate` with these arguments."""
    path = tmp_path / "report.json"
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--json", str(path),
                 "--cache-dir", str(tmp_path / "cache"), *map(str, args)])
    assert code == 0
    return json.loads(path.read_text())


def test_confusion_matrix_and_precision_recall_of_known_predictions():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])
    matrix = confusion_matrix(labels, predicted, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    precision, recall = per_class_metrics(matrix)
    assert precision == pytest.approx([1.0, 0.5, 0.5]) and recall == pytest.approx([2 / 3, 0.5, 1.0])
    # a never-predicted, never-present class has no precision or recall rather than a made-up 0
    assert per_class_metrics(confusion_matrix(labels, predicted, 4))[0][3] is None


def test_report_numbers_for_known_scores():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    logits = torch.zeros(6, 6)
    for i, (first, second) in enumerate([(0, 1), (0, 1), (1, 0), (1, 0), (2, 1), (2, 1)]):
        logits[i, first], logits[i, second] = 2.0, 1.0
    report = metrics_report(logits, labels, list("abcdef"))
    assert report["top1"] == pytest.approx(4 / 6) and report["top5"] == 1.0
    ranked = torch.arange(6.0).repeat(2, 1)  # class 0 scores lowest, 6th of 6: outside the top 5
    assert metrics_report(ranked, torch.tensor([0, 5]), list("abcdef"))["top5"] == 0.5
    two = metrics_report(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]), ["a", "b"])
    assert two["top1"] == 0.5 and "top5" not in two  # top-5 of two classes would be 100% whatever the model
    # mean over the three classes that have photos: (2/3 + 1/2 + 1) / 3; absent classes do not count
    assert report["mean_per_class_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert mean_class_accuracy(logits, labels) == pytest.approx((2 / 3 + 0.5 + 1) / 3)  # what training reports
    assert report["confusion_matrix"][0][:3] == [2, 1, 0] and report["per_class"]["b"]["precision"] == 0.5


def test_classes_are_matched_by_name():
    assert match_classes(["cat", "dog"], ["Dogs", "cats"]) == [1, 0]
    assert match_classes(["great_pyrenees", "pug"], ["pug", "Great Pyrenees"]) == [1, 0]
    with pytest.raises(UserError, match="does not know 1 class"):
        match_classes(["cat", "dog"], ["cat", "hamster"])


def test_the_checkpoints_task_is_not_carried_to_another_kind_of_dataset():
    def task(trained: dict, **given) -> str:
        return eval_config({"config": asdict(TrainConfig(**trained))}, **given).task

    folder_run = {"dataset": "folder", "data_dir": "pets", "task": "folder"}
    assert task({"task": "species"}, dataset="folder", data_dir="pets") == "folder"
    assert task(folder_run, dataset="sample") == "breed"
    assert eval_config({"config": asdict(TrainConfig(**folder_run))}, dataset="sample").data_dir is None
    assert task(folder_run, dataset="sample", task="species") == "species"
    assert task({**folder_run, "task": "breed"}) == "folder"  # saved before folder runs had a task of their own
    assert task({"task": "species"}) == "species" and task({"task": "species"}, dataset="oxford-iiit-pet") == "species"


def test_evaluate_command_writes_a_correct_report_and_pictures(trained, tmp_path, capsys):
    data, run = trained
    report_path, out = tmp_path / "report.json", tmp_path / "pictures"
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--json", str(report_path), "--out", str(out)]) == 0
    report = json.loads(report_path.read_text())
    assert report["class_names"] == ["disc", "square"] and report["split"] == "test"
    assert {"top1", "mean_per_class_accuracy", "confusion_matrix", "per_class"} <= set(report)
    matrix = torch.tensor(report["confusion_matrix"])
    assert matrix.sum(1).tolist() == [8, 8]  # rows are the true classes of the 16 test photos
    # the report agrees with predicting every test photo one by one
    classifier = PetClassifier.from_checkpoint(run / "best.pt", device="cpu")
    truth = [(p, ["disc", "square"].index(p.parent.name)) for p in sorted((data / "test").rglob("*.png"))]
    hits = sum(classifier.predict(p, top_k=1)[0][0] == classifier.class_names[y] for p, y in truth)
    assert report["top1"] == pytest.approx(hits / 16) and matrix.diag().sum() == hits
    assert "top5" not in report
    assert (out / "confusion.png").read_bytes()[:8] == PNG
    if hits < 16:
        assert (out / "mistakes.png").read_bytes()[:8] == PNG
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" not in printed


def test_evaluate_reports_calibration_before_and_after_the_temperature(trained, tmp_path, capsys):
    data, run = trained
    saved = load_checkpoint(run / "best.pt")
    assert saved["temperature"] != 1.0  # training fitted one
    plain, hot = tmp_path / "plain.pt", tmp_path / "hot.pt"
    save_checkpoint({k: v for k, v in saved.items() if k != "temperature"}, plain)  # as before calibration
    save_checkpoint({**saved, "temperature": 3.0}, hot)
    photos = sorted((data / "test").rglob("*.png"))
    images, labels = [load_image(p) for p in photos], torch.tensor([p.parent.name == "square" for p in photos]).long()
    raw = PetClassifier.from_checkpoint(plain, device="cpu").probabilities(images)
    calibrated = PetClassifier.from_checkpoint(hot, device="cpu").probabilities(images)

    capsys.readouterr()
    report = scored(hot, tmp_path, "--out", tmp_path / "pictures")
    calibration = report["calibration"]
    assert calibration["temperature"] == 3.0 and calibration["bins"] == 10
    assert calibration["ece_before"] == pytest.approx(expected_calibration_error(raw, labels), abs=1e-5)
    assert calibration["ece_after"] == pytest.approx(expected_calibration_error(calibrated, labels), abs=1e-5)
    assert calibration["ece_before"] != pytest.approx(calibration["ece_after"], abs=1e-3)
    assert sum(calibration["reliability_after"]["photos"]) == 16
    assert (tmp_path / "pictures" / "reliability.png").read_bytes()[:8] == PNG
    printed = capsys.readouterr().out
    assert (f"temperature 3, expected calibration error {calibration['ece_before']:.3f} -> "
            f"{calibration['ece_after']:.3f}") in printed
    unscaled = scored(plain, tmp_path)
    assert unscaled["top1"] == report["top1"] and unscaled["calibration"]["temperature"] == 1.0  # T = 1: loads
    assert unscaled["calibration"]["ece_before"] == unscaled["calibration"]["ece_after"] == calibration["ece_before"]
    assert "no temperature (T = 1)" in capsys.readouterr().out


def test_species_scored_through_breeds_sum_the_calibrated_breed_probabilities(breeds, tmp_path):
    pets = make_folder(tmp_path / "pets", per_class=4)
    (pets / "disc").rename(pets / "cats")
    (pets / "square").rename(pets / "dogs")
    saved = load_checkpoint(breeds)
    for name in ("head.3.weight", "head.3.bias"):  # logits a few units apart, so that T visibly matters
        saved["model_state"][name] *= 100
    species = {}
    for t in (1.0, 4.0):
        save_checkpoint({**saved, "temperature": t}, tmp_path / f"t{t}.pt")
        result = evaluate_checkpoint(tmp_path / f"t{t}.pt", "folder", str(pets), split="all",
                                     cache_dir=str(tmp_path / "cache"), device="cpu")
        assert result["report"]["scored_through"] == "species" and result["report"]["calibration"]["temperature"] == t
        predicted = PetClassifier.from_checkpoint(tmp_path / f"t{t}.pt", device="cpu").predict_paths(
            sorted(pets.rglob("*.png")), workers=0)
        expected = torch.tensor([[dict(p.species)["cat"], dict(p.species)["dog"]] for p in predicted])
        torch.testing.assert_close(result["probs"], expected, atol=1e-4, rtol=0)  # as predict reports them
        species[t] = result["probs"]
    assert (species[1.0] - species[4.0]).abs().max() > 0.02


def test_evaluate_on_a_dataset_with_unknown_classes_is_one_line_error(trained, tmp_path, capsys):
    _, run = trained
    other = tmp_path / "other"
    make_folder(other)
    (other / "square").rename(other / "hamster")
    code = main(["evaluate", "--checkpoint", str(run / "best.pt"), "--dataset", "folder", "--data-dir", str(other),
                 "--split", "val"])
    err = capsys.readouterr().err
    assert code == 2 and "does not know 1 class(es)" in err and "hamster" in err and len(err.splitlines()) == 1


def test_evaluate_scores_all_photos_of_a_folder_or_its_only_split(trained, tmp_path, capsys):
    data, run = trained
    checkpoint = run / "best.pt"
    everything = scored(checkpoint, tmp_path, "--dataset", "folder", "--data-dir", data, "--split", "all")
    assert everything["photos"] == 48 and everything["split"] == "all"  # train/, val/ and test/
    assert torch.tensor(everything["confusion_matrix"]).sum(1).tolist() == [24, 24]
    new = make_folder(tmp_path / "new", per_class=5)  # class folders directly, no train/
    assert scored(checkpoint, tmp_path, "--dataset", "folder", "--data-dir", new, "--split", "all")["photos"] == 10
    test_only = make_folder(tmp_path / "test-only", per_class=3, splits=("test",))
    for split in ("test", "all"):
        report = scored(checkpoint, tmp_path, "--dataset", "folder", "--data-dir", test_only, "--split", split)
        assert report["photos"] == 6 and report["class_names"] == ["disc", "square"]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "folder", "--data-dir", str(test_only),
                 "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "has no val split" in err and "--split all" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("split", ["test", "all"])
def test_evaluate_on_a_flat_folder_says_the_layout_expected(trained, tmp_path, capsys, split):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        draw_photo(flat / f"pet_{i}.jpg", "disc", i)
    code = main(["evaluate", "--checkpoint", str(trained[1] / "best.pt"), "--dataset", "folder", "--data-dir",
                 str(flat), "--split", split])
    err = capsys.readouterr().err
    assert code == 2 and f"2 photos directly in {flat}" in err and "one sub-folder per class" in err
    assert len(err.splitlines()) == 1


def test_a_breed_model_scores_a_cat_dog_folder_through_species(breeds, tmp_path, capsys):
    pets = make_folder(tmp_path / "pets", per_class=4)
    (pets / "disc").rename(pets / "Cats")
    (pets / "square").rename(pets / "dogs")
    report = scored(breeds, tmp_path, "--dataset", "folder", "--data-dir", pets, "--split", "all")
    assert report["class_names"] == ["cat", "dog"] and report["scored_through"] == "species"
    assert report["photos"] == 8 and "top5" not in report
    # each photo's species is the one whose breeds' probabilities sum highest, as predict reports it
    classifier = PetClassifier.from_checkpoint(breeds, device="cpu")
    photos = sorted(pets.rglob("*.png"))
    expected = torch.zeros(2, 2, dtype=torch.long)
    for photo, result in zip(photos, classifier.predict_paths(photos)):
        expected[int(photo.parent.name == "dogs"), int(result.species[0][0] == "dog")] += 1
    assert report["confusion_matrix"] == expected.tolist()
    printed = capsys.readouterr().out
    assert "species" in printed and "top-5" not in printed


def test_evaluate_a_test_only_oxford_copy_and_all_of_one(breeds, tmp_path):
    both = make_tiny_oxford(tmp_path / "both", breeds=("Abyssinian", "Bengal", "beagle"), per_split=(1, 2))
    everything = scored(breeds, tmp_path, "--dataset", "oxford-iiit-pet", "--data-dir", both, "--split", "all")
    assert everything["photos"] == 9 and everything["per_class"]["beagle"]["photos"] == 3
    test_only = make_tiny_oxford(tmp_path / "test-only", breeds=("Abyssinian", "Bengal", "beagle"), per_split=(1, 2))
    (test_only / "oxford-iiit-pet" / "annotations" / "trainval.txt").write_text("")
    report = scored(breeds, tmp_path, "--dataset", "oxford-iiit-pet", "--data-dir", test_only)
    photos = {name: m["photos"] for name, m in report["per_class"].items() if m["photos"]}
    assert photos == {"abyssinian": 2, "bengal": 2, "beagle": 2} and 0 <= report["top5"] <= 1
    species = scored(breeds, tmp_path, "--dataset", "oxford-iiit-pet", "--data-dir", test_only, "--task", "species")
    assert species["scored_through"] == "species" and [m["photos"] for m in species["per_class"].values()] == [4, 2]


def test_training_writes_curves_and_works_without_matplotlib(trained, tmp_path, monkeypatch, capsys):
    _, run = trained
    assert (run / "curves.png").read_bytes()[:8] == PNG
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert write_curves(copy) is None
    assert 'pip install -e ".[plots]"' in capsys.readouterr().out and not (copy / "curves.png").exists()


def test_the_mistakes_grid_keeps_each_two_line_caption_clear_of_the_photo_above(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    from petclassifier.insight import plots

    overlaps = []

    def measured(fig, path):
        fig.canvas.draw()
        renderer, photos = fig.canvas.get_renderer(), [ax for ax in fig.axes if ax.images]
        for ax in photos:
            caption = ax.title.get_window_extent(renderer)
            overlaps.extend(other for other in photos if other is not ax
                            and caption.overlaps(other.get_images()[0].get_window_extent(renderer)))
        plots.pyplot().close(fig)
        return path

    monkeypatch.setattr(plots, "save", measured)
    images = [torch.randint(0, 255, (3, 120, 120), dtype=torch.uint8) for _ in range(8)]
    captions = ["true: american_pit_bull_terrier\npredicted: staffordshire_bull_terrier 97%"] * 8
    plots.plot_image_grid(images, captions, tmp_path / "mistakes.png", "Most confident mistakes (test split)")
    assert overlaps == []
