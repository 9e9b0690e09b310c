import json
import math

import pytest
import torch

from petclassifier.cli import main
from petclassifier.config import TrainConfig
from petclassifier.insight.compare import compare, table, write_outputs
from petclassifier.insight.handcrafted import (
    LinearClassifier,
    colour_histogram,
    handcrafted_features,
    hog,
    lbp_histogram,
)

from .conftest import make_folder
from .test_evaluate import PNG


def constant(colour, size=32):
    return torch.tensor(colour, dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, size, size).contiguous()


def test_colour_histogram_of_a_constant_image_is_one_bin():
    hist = colour_histogram(constant((200, 100, 50)))
    assert hist.shape == (1, 512)
    # 200 // 32 = 6, 100 // 32 = 3, 50 // 32 = 1 -> bin (6 * 8 + 3) * 8 + 1
    assert hist[0, 409] == 1.0 and hist.sum() == 1.0


def test_hog_of_a_constant_image_is_zero_and_of_an_edge_is_horizontal_gradient():
    assert hog(constant((90, 90, 90))).abs().max() == 0
    assert hog(constant((90, 90, 90))).shape == (1, 3 * 3 * 4 * 9)  # 4x4 cells of 8 px -> 3x3 blocks of 2x2
    edge = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    edge[..., 16:] = 255  # a vertical edge: the gradient points along x, orientation 0 degrees
    votes = hog(edge).view(3, 3, 9, 4).sum((0, 1, 3))  # blocks hold (orientation, 2x2 cells)
    assert votes.argmax() == 0 and votes[1:].sum() == 0


def test_lbp_of_a_constant_image_is_the_all_ones_code():
    hist = lbp_histogram(constant((10, 200, 30)), grid=2)
    assert hist.shape == (1, 4 * 256)
    # every neighbour equals the centre, so every bit is set: code 255 in each of the four cells
    assert hist.view(4, 256)[:, 255].tolist() == [1.0] * 4 and hist.sum() == 4


def test_handcrafted_pipeline_separates_red_discs_from_blue_squares(tmp_path):
    from petclassifier.data.datasets import folder_data
    from petclassifier.data.images import load_image
    from petclassifier.data.transforms import Preprocessing

    data = folder_data(make_folder(tmp_path / "shapes", per_class=10), 0.3, 0)
    prep = Preprocessing.for_model("smallcnn", 32)

    def feats(split):
        x = torch.stack([prep.square(load_image(p)) for p in split.paths])
        return handcrafted_features(x, size=32), torch.tensor(split.labels)

    (x, y), (xv, yv) = feats(data.train), feats(data.val)
    classifier = LinearClassifier(steps=30).fit(x, y, xv, yv, 2)
    assert (classifier.logits(xv).argmax(1) == yv).float().mean() == 1.0
    assert math.isfinite(classifier.strength)


def test_compare_on_a_folder_dataset_writes_rows_json_and_chart(tmp_path):
    data = make_folder(tmp_path / "shapes", per_class=8, splits=("train", "val", "test"))
    base = TrainConfig(dataset="folder", data_dir=str(data), image_size=32, epochs=2, batch_size=8, workers=0,
                       cache_dir=str(tmp_path / "cache"), device="cpu")
    out = tmp_path / "compare"
    rows = compare(base, ["folder"], out, epochs=1, methods=("handcrafted", "smallcnn"))  # pretrained: slow on CPU
    write_outputs(rows, str(out / "compare.json"), out / "comparison.png")
    saved = json.loads((out / "compare.json").read_text())["rows"]
    assert saved == rows and [r["features"] for r in rows] == ["hand-crafted", "learned"]
    for r in rows:
        required = {"method", "features", "accuracy", "mean_per_class_accuracy", "train_seconds"}
        assert required <= set(r)
        assert r["task"] == "shapes" and r["photos"] == 16
        # 8 test photos per class: the mean of the two recalls is the plain accuracy, a whole number of sixteenths
        assert r["mean_per_class_accuracy"] == r["accuracy"] and (r["accuracy"] * 16).is_integer()
    evaluation = json.loads((out / "smallcnn-folder" / "evaluation.json").read_text())  # each learned run keeps it
    assert evaluation["split"] == "test" and evaluation["photos"] == 16
    assert rows[1]["accuracy"] == round(evaluation["top1"], 4)
    assert rows[1]["mean_per_class_accuracy"] == round(evaluation["mean_per_class_accuracy"], 4)
    assert (out / "comparison.png").read_bytes()[:8] == PNG
    assert table(rows).count("\n") == 3


@pytest.mark.parametrize("bad", [["--dataset", "folder"]])
def test_compare_without_a_folder_is_a_user_error(bad, capsys):
    assert main(["compare", *bad]) == 2 and "--data-dir" in capsys.readouterr().err


def test_handcrafted_row_scored_on_val_never_learned_from_val(tmp_path):
    """A folder without test/ is scored on val/: the hand-crafted classifier may choose its L2 strength there but
    must not train on those photos. Here val/'s labels are swapped, so a classifier that learned only from train/
    gets nearly every val photo wrong (it tells these shapes apart 97.5% of the time); one that also learned from
    val/ gets them all right."""
    from petclassifier.insight.compare import handcrafted_row

    data = make_folder(tmp_path / "shapes", per_class=20, splits=("train", "val"))
    val = data / "val"
    (val / "disc").rename(val / "was_disc")
    (val / "square").rename(val / "disc")
    (val / "was_disc").rename(val / "square")
    cfg = TrainConfig(dataset="folder", data_dir=str(data), workers=0, cache_dir=str(tmp_path / "cache")).resolved()
    row = handcrafted_row(cfg, "val")
    assert row["photos"] == 40 and row["accuracy"] <= 0.25
