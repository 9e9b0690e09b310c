import json

import pytest
import torch
from torch import nn

from petclassifier import PetClassifier, train
from petclassifier.data.cache import decode_images
from petclassifier.data.images import load_image
from petclassifier.data.transforms import Preprocessing
from petclassifier.engine.loop import train_one_epoch
from petclassifier.models.checkpoint import load_checkpoint, save_checkpoint
from petclassifier.models.registry import build_model

from .conftest import SAMPLE

TINY = dict(dataset="folder", model="smallcnn", image_size=32, epochs=3, batch_size=8, lr=3e-3, workers=0)


def test_training_writes_metrics_and_checkpoints(shapes_dir, cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    summary = train(**TINY, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        required = {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds", "elapsed", "time"}
        assert required <= set(r)
        assert all(isinstance(v, (int, float)) for v in r.values())
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "config.json").read_text())["model"] == "smallcnn"
    assert summary["best_val_accuracy"] == max(r["val_accuracy"] for r in rows)
    # the calibration temperature fitted on the validation split goes into best.pt and summary.json
    fitted = json.loads((out / "summary.json").read_text())["calibration"]
    assert fitted == summary["calibration"] and fitted["nll_after"] <= fitted["nll_before"]
    assert fitted["temperature"] != 1.0 and load_checkpoint(out / "best.pt")["temperature"] == fitted["temperature"]
    assert PetClassifier.from_checkpoint(out, device="cpu").temperature == fitted["temperature"]
    printed = capsys.readouterr().out
    assert f"calibration: temperature {fitted['temperature']:.3g}" in printed
    # the last line and summary.json: the score, the best epoch, the time from the run's start, the checkpoint
    saved = json.loads((out / "summary.json").read_text())
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert saved["best_epoch"] == best["epoch"] and saved["seconds"] >= rows[-1]["elapsed"] > 0
    assert all(r["val_photos"] == summary["photos"]["val"] for r in rows)
    assert printed.splitlines()[-1] == (f"val accuracy {summary['best_val_accuracy']:.1%}; best epoch "
                                        f"{best['epoch']} of 3; {saved['seconds']:.1f} s in all; checkpoint "
                                        f"{out / 'best.pt'}")


def test_resume_continues_the_same_metrics_file(shapes_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    train(**{**TINY, "epochs": 2}, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(out))
    train(**{**TINY, "epochs": 3}, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(out),
          resume=str(out / "last.pt"))
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_fast_path_trains_the_last_stages_on_cached_features(shapes_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    cfg = {**TINY, "model": "efficientnet_lite0", "pretrained": True, "trainable_stages": 2, "augment_views": 2,
           "image_size": 64, "epochs": 2}
    before = build_model("efficientnet_lite0", 2, pretrained=True).state_dict()
    train(**cfg, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(out))
    after = PetClassifier.from_checkpoint(out / "last.pt").model.state_dict()
    changed = {k.split(".")[0] + "." + k.split(".")[1] for k in before
               if before[k].is_floating_point() and not torch.equal(before[k], after[k])}
    assert changed == {"body.7", "body.8", "head.3"}  # blocks[6], the 1x1 head conv and the linear layer


def test_checkpoint_round_trip_gives_identical_predictions(shapes_dir, tmp_path):
    torch.manual_seed(0)
    names, prep = ["disc", "square"], Preprocessing.for_model("smallcnn", 32)
    paths = sorted(shapes_dir.rglob("*.png"))
    x = torch.stack([prep.square(load_image(p)) for p in paths])
    y = torch.tensor([names.index(p.parent.name) for p in paths])
    model = build_model("smallcnn", 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    # a few steps, so the weights and the BatchNorm statistics are no longer their initial values
    train_one_epoch(model, [(x, y)] * 5, prep.eval_batch, nn.CrossEntropyLoss(), optimizer, scheduler,
                    torch.device("cpu"))
    with torch.no_grad():
        before = model.eval()(prep.eval_batch(x)).softmax(1)
    save_checkpoint({"model_name": "smallcnn", "class_names": names, "task": "breed", "species_of": {},
                     "preprocessing": prep.as_dict(), "model_state": model.state_dict()}, tmp_path / "best.pt")

    loaded = PetClassifier.from_checkpoint(tmp_path / "best.pt", device="cpu")
    torch.testing.assert_close(loaded.probabilities([load_image(p) for p in paths]), before, atol=1e-5, rtol=0)
    assert [ranked[0][0] for ranked in loaded.predict(paths, top_k=1)] == [names[i] for i in before.argmax(1)]


def test_real_photos_small_batch_is_overfit(cache_dir):
    """Backpropagation works end to end on real photos: 8 breeds' photos are memorised in a few dozen steps."""
    torch.manual_seed(0)
    paths = sorted((SAMPLE / "oxford-iiit-pet" / "images").glob("*_1*.jpg"))[:8]
    prep = Preprocessing.for_model("smallcnn", 64)
    images, bad = decode_images([str(p) for p in paths], prep, cache_dir, workers=0)
    assert not bad
    x, y = prep.eval_batch(images.load()), torch.arange(8)
    model = build_model("smallcnn", 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = [(x, y)] * 60
    loss = train_one_epoch(model, loader, nn.Identity(), nn.CrossEntropyLoss(), optimizer, scheduler,
                           torch.device("cpu"))
    with torch.no_grad():
        final = nn.functional.cross_entropy(model.eval()(x), y).item()
    assert loss < 2.0 and final < 0.1, (loss, final)


@pytest.mark.parametrize("bad", [{"lr": 1e30}])
def test_non_finite_loss_stops_with_a_clear_error(shapes_dir, cache_dir, tmp_path, bad):
    with pytest.raises(FloatingPointError, match="lower --lr"):
        train(**{**TINY, **bad, "epochs": 2}, data_dir=str(shapes_dir), cache_dir=cache_dir,
              out=str(tmp_path / "run"))


def test_refit_trains_the_head_again_on_train_and_val_photos_with_its_own_temperature(tmp_path, cache_dir, capsys):
    from .conftest import make_folder

    data = make_folder(tmp_path / "shapes", per_class=8, splits=("train", "val", "test"))
    cfg = dict(dataset="folder", data_dir=str(data), model="efficientnet_lite2", image_size=32, epochs=3,
               batch_size=8, workers=0, augment_views=2, cache_dir=cache_dir)
    held_out = train(**cfg, refit=False, out=str(tmp_path / "held-out"))
    capsys.readouterr()
    refit = train(**cfg, out=str(tmp_path / "refit"))
    assert refit["refit"] and not held_out["refit"]
    photos = refit["photos"]["train"] + refit["photos"]["val"]
    assert f"refit: 3 epochs on {photos} photos" in capsys.readouterr().out
    a, b = load_checkpoint(tmp_path / "held-out" / "best.pt"), load_checkpoint(tmp_path / "refit" / "best.pt")
    # each temperature fitted for the head saved, on photos it never learned from: the best epoch's on the val photos,
    # the refit's on every photo scored by a head trained the same way without it
    assert held_out["calibration"]["source"] == "validation" and refit["calibration"]["source"] == "cross-fitted"
    assert held_out["calibration"]["photos"] == held_out["photos"]["val"] and refit["calibration"]["photos"] == photos
    assert (a["temperature"], b["temperature"]) == (held_out["calibration"]["temperature"],
                                                    refit["calibration"]["temperature"])
    assert b["refit"] and "refit" not in a and 0 <= refit["cross_fitted_accuracy"] <= 1
    assert not torch.equal(a["model_state"]["head.3.weight"], b["model_state"]["head.3.weight"])
    assert torch.equal(a["model_state"]["body.0.0.weight"], b["model_state"]["body.0.0.weight"])  # body frozen
    # a folder with no test split keeps the refit too: its out-of-fold accuracy is its estimate on new photos
    no_test = train(**{**cfg, "data_dir": str(make_folder(tmp_path / "no-test", per_class=8, splits=("train", "val")))},
                    out=str(tmp_path / "no-test-run"))
    assert no_test["refit"] and no_test["calibration"]["source"] == "cross-fitted" and "test_accuracy" not in no_test
    assert f"(then refit on train + val: {no_test['cross_fitted_accuracy']:.1%} cross-fitted)" in \
        capsys.readouterr().out.splitlines()[-1]


def test_compile_traces_the_trained_part_and_saves_a_checkpoint_of_the_plain_model(shapes_dir, cache_dir, tmp_path,
                                                                                     monkeypatch):
    """--compile: the trained part goes through torch.compile (here its graphs are caught and run as traced, which
    tests what a GPU's compiler is given in seconds), and best.pt holds the plain model's weights."""
    import functools

    graphs = []

    def catching(gm, example_inputs):  # a torch.compile backend: the captured graph, run as it is
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=catching))
    out = tmp_path / "run"
    summary = train(**TINY, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(out), compile=True)
    assert graphs and summary["best_val_accuracy"] > 0
    ckpt = load_checkpoint(out / "best.pt")
    assert not any("_orig_mod" in name for name in ckpt["model_state"])
    assert PetClassifier.from_checkpoint(out, device="cpu").predict(str(next(shapes_dir.rglob("*.png"))))
