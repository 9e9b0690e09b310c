"""A recipe sized to the photos, probabilities fitted on photos the scored model never learned from, resumes that know
what was given, and runs at chance that say so."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from petclassifier import train
from petclassifier.config import MIN_STEPS, RECIPES, TrainConfig, sized_recipe
from petclassifier.data.splits import stratified_folds
from petclassifier.errors import UserError
from petclassifier.insight.evaluate import evaluate_checkpoint, summary_lines
from petclassifier.models.checkpoint import load_checkpoint
from petclassifier.training.calibration import fit_temperature
from petclassifier.training.refit import cross_fitted_logits

from .conftest import ROOT, draw_photo, make_folder

LITE = dict(dataset="folder", model="efficientnet_lite0", image_size=32, workers=0)


def test_the_recipe_gives_a_tiny_folder_enough_steps_and_oxford_what_cross_validation_chose():
    lite2 = RECIPES["efficientnet_lite2"]
    oxford = sized_recipe({**lite2, "batch_size": 64}, 901)  # the Oxford subset's training photos
    assert {k: oxford[k] for k in ("batch_size", "epochs", "lr", "augment_views")} == \
        {"batch_size": 64, "epochs": 15, "lr": 1e-2, "augment_views": 6}  # docs/recipe-choice.json
    for photos in (10, 55, 200, 500):
        r = sized_recipe({**lite2, "batch_size": 64}, photos)
        steps = photos // r["batch_size"]
        assert steps >= min(4, photos // 8) and steps * r["epochs"] >= MIN_STEPS, (photos, r)  # 55: not 1 step
        assert r["lr"] == lite2["lr"]
    big = sized_recipe({**lite2, "batch_size": 64}, 25_000)
    assert big["batch_size"] == 64 and big["epochs"] == 15 and big["augment_views"] == 4
    # a field the user gives is kept; the recipe sizes only what was left out
    cfg = TrainConfig(batch_size=16, epochs=2).resolved(train_photos=55)
    assert (cfg.batch_size, cfg.epochs) == (16, 2)
    assert TrainConfig().resolved(train_photos=55).batch_size == 8


def test_a_tiny_folder_trains_with_the_sized_recipe_end_to_end(tmp_path, capsys):
    data = make_folder(tmp_path / "shapes", per_class=6)  # 12 photos: 10 train, 2 val
    summary = train(**LITE, data_dir=str(data), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"),
                    augment_views=1, flip_tta=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["batch_size"] == 8 and saved["epochs"] == MIN_STEPS  # one step an epoch: 200 epochs of 1
    assert "recipe: batches of 8, 1 step an epoch for 200 epochs (200 steps)" in capsys.readouterr().out
    assert summary["best_val_accuracy"] > 0.5


def test_the_temperature_holds_where_the_photos_cannot_set_it():
    right = torch.eye(3).repeat(4, 1) * 3.0  # 12 photos, every one right: the NLL falls without end as T -> 0
    fit = fit_temperature(right, torch.arange(3).repeat(4))
    assert 0.2 < fit["temperature"] < 1.0 and fit["wrong"] == 0 and fit["photos"] == 12
    g = torch.Generator().manual_seed(0)  # thousands of photos: the prior does not matter
    z = torch.randn(3000, 4, generator=g) * 2
    labels = torch.multinomial(z.softmax(1), 1, generator=g).flatten()
    assert fit_temperature(z * 3, labels)["temperature"] == pytest.approx(3.0, rel=0.1)


def test_stratified_folds_split_every_class_evenly():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 7)
    folds = stratified_folds(labels, 5, seed=0)
    assert sorted(torch.cat(folds).tolist()) == list(range(22))
    for fold in folds:
        counts = torch.bincount(labels[fold], minlength=3).tolist()
        assert counts[0] == 2 and counts[1] == 1 and counts[2] in (1, 2)


def test_cross_fitted_logits_score_each_photo_with_a_head_that_never_saw_it():
    # noise features with random labels: a head learns its own photos by heart, and knows nothing of the others
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(60, 256, 1, 1, generator=g), torch.randint(0, 2, (60,), generator=g)
    head = nn.Sequential(nn.Flatten(), nn.Linear(256, 2))
    initial = {k: v.clone() for k, v in head.state_dict().items()}
    cfg = TrainConfig(epochs=30, batch_size=8, lr=1e-2, augment_views=1).resolved()
    logits, scored = cross_fitted_logits(head, head, initial, lambda epoch: features, [features], labels,
                                         nn.CrossEntropyLoss(), cfg, torch.device("cpu"))
    assert sorted(scored.tolist()) == sorted(labels.tolist())
    assert (logits.argmax(1) == scored).float().mean() < 0.75  # chance: nothing carried over from training
    last_held = stratified_folds(labels, 5, cfg.seed)[-1]
    learned = torch.ones(60, dtype=torch.bool)
    learned[last_held] = False
    right = head(features).argmax(1) == labels  # the last fold's head did learn its own photos by heart:
    assert right[learned].float().mean() > 0.95 and right[~learned].float().mean() < 0.75


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A default-recipe run (head on pooled features, refit, test split) of 4 epochs, finished."""
    root = tmp_path_factory.mktemp("finished")
    data = make_folder(root / "shapes", per_class=8, splits=("train", "val", "test"))
    cfg = dict(LITE, data_dir=str(data), cache_dir=str(root / "cache"), batch_size=8, augment_views=2)
    train(**cfg, epochs=4, out=str(root / "run"))
    return root, cfg


def test_a_finished_run_trained_further_calibrates_the_model_it_keeps(finished_run):
    root, cfg = finished_run
    resumed = root / "resumed"
    (resumed).mkdir()
    for name in ("last.pt", "best.pt", "metrics.jsonl", "summary.json", "config.json"):
        (resumed / name).write_bytes((root / "run" / name).read_bytes())
    with pytest.raises(UserError, match="has finished its 4 epochs; to train it longer"):
        train(**cfg, resume=str(resumed))
    more = train(**cfg, resume=str(resumed), epochs=6)
    fresh = train(**cfg, epochs=6, out=str(root / "fresh"))
    # the kept head is the refit of a 6-epoch run and its temperature is cross-fitted, as in a fresh 6-epoch run
    assert more["refit"] and more["calibration"]["source"] == "cross-fitted"
    assert more["calibration"]["photos"] == more["photos"]["train"] + more["photos"]["val"]
    assert more["calibration"]["temperature"] == pytest.approx(fresh["calibration"]["temperature"], rel=1e-3)
    a, b = load_checkpoint(resumed / "best.pt"), load_checkpoint(root / "fresh" / "best.pt")
    torch.testing.assert_close(a["model_state"]["head.3.weight"], b["model_state"]["head.3.weight"])
    assert a["temperature"] == more["calibration"]["temperature"]


def test_resume_compares_a_flag_given_at_its_default_value(finished_run, tmp_path):
    root, cfg = finished_run
    with pytest.raises(UserError, match="--batch-size 64 contradicts .* has 8"):
        train(**{**cfg, "batch_size": 64}, resume=str(root / "run"), epochs=8)  # the old default: it was ignored
    with pytest.raises(UserError, match="--refit off contradicts .* has on"):
        train(**cfg, resume=str(root / "run"), epochs=8, refit=False)  # given as False, the default being True
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--resume", str(root / "run"), "--epochs", "8",
               "--seed", "0", "--val-fraction", "0.2", "--cache-dir", cfg["cache_dir"]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: --val-fraction 0.2 contradicts the run being resumed ({root / 'run' / 'last.pt'} has 0.1); "
        "leave it out to go on as the run was"]  # --seed 0 is the run's own: no contradiction


def test_an_unknown_model_is_refused_before_the_photos_are_listed(tmp_path):
    with pytest.raises(UserError, match="unknown model 'resnet1000'"):
        train(model="resnet1000", dataset="folder", data_dir=str(tmp_path / "no-such-folder"))


def test_a_run_at_chance_says_so_and_evaluate_too(tmp_path, capsys):
    data = tmp_path / "noise"  # both classes the same kind of photo: nothing to learn
    for i, kind in enumerate(["a"] * 20 + ["b"] * 20):
        (data / kind).mkdir(parents=True, exist_ok=True)
        draw_photo(data / kind / f"{i}.png", "disc", seed=i)
    out = tmp_path / "run"
    train(dataset="folder", data_dir=str(data), model="smallcnn", image_size=32, epochs=3, workers=0, val_fraction=0.5,
          cache_dir=str(tmp_path / "cache"), out=str(out))
    printed = capsys.readouterr().out
    assert "warning: after 3 epochs validation accuracy" in printed and "scores 50.0%" in printed
    assert "ImageNet weights" in printed  # what to try, for a network without them
    report = evaluate_checkpoint(out / "best.pt", split="val", device="cpu")["report"]
    assert report["at_chance"] and any(line.startswith("at chance:") for line in summary_lines(report))


def test_a_run_that_learns_is_not_called_at_chance(tmp_path, capsys):
    data = make_folder(tmp_path / "shapes", per_class=8, splits=("train", "val", "test"))
    train(**{**LITE, "image_size": 64}, data_dir=str(data), cache_dir=str(tmp_path / "cache"), augment_views=2,
          out=str(tmp_path / "run"))  # the recipe sized to 16 photos: 100 steps of 8
    assert "at chance" not in capsys.readouterr().out
    report = evaluate_checkpoint(tmp_path / "run" / "best.pt", split="test", device="cpu")["report"]
    assert report["top1"] > 0.9 and not report["at_chance"]
    assert not any(line.startswith("at chance:") for line in summary_lines(report))
