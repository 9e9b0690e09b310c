import json
import sys

import pytest
import torch

from petclassifier import PetClassifier, train
from petclassifier.cli import main
from petclassifier.errors import UserError
from petclassifier.evaluate import match_classes
from petclassifier.metrics import confusion_matrix, mean_class_accuracy, metrics_report, per_class_metrics
from petclassifier.plots import write_curves

from .conftest import make_folder
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
    # mean over the three classes that have photos: (2/3 + 1/2 + 1) / 3; absent classes do not count
    assert report["mean_per_class_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert mean_class_accuracy(logits, labels) == pytest.approx((2 / 3 + 0.5 + 1) / 3)  # what training reports
    assert report["confusion_matrix"][0][:3] == [2, 1, 0] and report["per_class"]["b"]["precision"] == 0.5


def test_classes_are_matched_by_name():
    assert match_classes(["cat", "dog"], ["Dogs", "cats"]) == [1, 0]
    assert match_classes(["great_pyrenees", "pug"], ["pug", "Great Pyrenees"]) == [1, 0]
    with pytest.raises(UserError, match="does not know 1 class"):
        match_classes(["cat", "dog"], ["cat", "hamster"])


def test_evaluate_command_writes_a_correct_report_and_pictures(trained, tmp_path, capsys):
    data, run = trained
    report_path, out = tmp_path / "report.json", tmp_path / "pictures"
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--json", str(report_path), "--out", str(out)]) == 0
    report = json.loads(report_path.read_text())
    assert report["class_names"] == ["disc", "square"] and report["split"] == "test"
    assert {"top1", "top5", "mean_per_class_accuracy", "confusion_matrix", "per_class"} <= set(report)
    matrix = torch.tensor(report["confusion_matrix"])
    assert matrix.sum(1).tolist() == [8, 8]  # rows are the true classes of the 16 test photos
    # the report agrees with predicting every test photo one by one
    classifier = PetClassifier.from_checkpoint(run / "best.pt", device="cpu")
    truth = [(p, ["disc", "square"].index(p.parent.name)) for p in sorted((data / "test").rglob("*.png"))]
    hits = sum(classifier.predict(p, top_k=1)[0][0] == classifier.class_names[y] for p, y in truth)
    assert report["top1"] == pytest.approx(hits / 16) and matrix.diag().sum() == hits
    assert report["top5"] == 1.0
    assert (out / "confusion.png").read_bytes()[:8] == PNG
    if hits < 16:
        assert (out / "mistakes.png").read_bytes()[:8] == PNG
    assert "top-1" in capsys.readouterr().out


def test_evaluate_on_a_dataset_with_unknown_classes_is_one_line_error(trained, tmp_path, capsys):
    _, run = trained
    other = tmp_path / "other"
    make_folder(other)
    (other / "square").rename(other / "hamster")
    code = main(["evaluate", "--checkpoint", str(run / "best.pt"), "--dataset", "folder", "--data-dir", str(other),
                 "--split", "val"])
    err = capsys.readouterr().err
    assert code == 2 and "does not know 1 class(es)" in err and "hamster" in err and len(err.splitlines()) == 1


def test_training_writes_curves_and_works_without_matplotlib(trained, tmp_path, monkeypatch, capsys):
    _, run = trained
    assert (run / "curves.png").read_bytes()[:8] == PNG
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert write_curves(copy) is None
    assert 'pip install -e ".[plots]"' in capsys.readouterr().out and not (copy / "curves.png").exists()
