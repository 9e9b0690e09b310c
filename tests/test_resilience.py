"""A long run loses nothing: exact resume after SIGKILL, Ctrl-C saves last.pt, a bad loss keeps the last good one."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import petclassifier.training.epochs
from petclassifier import train
from petclassifier.errors import UserError
from petclassifier.models.checkpoint import load_checkpoint

from .conftest import ROOT, make_folder

# 22 training photos in batches of 4: 5 steps per epoch, last.pt also after step 7 (batch 2 of epoch 2);
# deterministic, so two runs give identical weights
CFG = dict(dataset="folder", model="smallcnn", image_size=32, epochs=2, batch_size=4, lr=3e-3, workers=0,
           save_every=7, deterministic=True)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and killed and resumed runs must sum in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def launch(tmp_path, patch: str, args: dict) -> subprocess.Popen:
    """`petclassifier train` in a subprocess, after running `patch` (test instrumentation) in it."""
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(patch) + "\nimport sys\nfrom petclassifier.cli import main\n"
                      "sys.exit(main(['train', *sys.argv[1:]]))\n")
    flags = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return subprocess.Popen([sys.executable, str(script), *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def rows(run_dir):
    """metrics.jsonl without the wall-clock times."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "elapsed", "time")} for line in lines]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(shapes_dir, cache_dir, tmp_path):
    killed = tmp_path / "killed"
    # step 7 is batch 2 of epoch 2: once its last.pt is written the process waits there to be killed
    patch = """
        import sys, time
        import petclassifier.training.epochs as t
        save = t.save_checkpoint
        def save_then_wait(payload, path):
            save(payload, path)
            if path.name == "last.pt" and (payload["epoch"], payload["step"]) == (1, 2):
                print("saved step 7", flush=True)
                time.sleep(600)
        t.save_checkpoint = save_then_wait
    """
    proc = launch(tmp_path, patch, {**CFG, "data_dir": shapes_dir, "cache_dir": cache_dir, "out": killed})
    try:
        line = proc.stdout.readline()
        while line and "saved step 7" not in line:
            line = proc.stdout.readline()
        assert "saved step 7" in line, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert [r["epoch"] for r in rows(killed)] == [1]
    ckpt = load_checkpoint(killed / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)

    train(**CFG, data_dir=str(shapes_dir), cache_dir=cache_dir, resume=str(killed / "last.pt"))  # --out: its own
    train(**CFG, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(tmp_path / "whole"))
    assert rows(killed) == rows(tmp_path / "whole")  # epochs 1 and 2: none lost, none repeated
    assert [r["epoch"] for r in rows(killed)] == [1, 2]
    for name in ("best.pt", "last.pt"):
        resumed, whole = load_checkpoint(killed / name), load_checkpoint(tmp_path / "whole" / name)
        for key, value in whole["model_state"].items():
            assert torch.equal(resumed["model_state"][key], value), (name, key)
    assert resumed["optimizer"]["state"][0]["step"] == whole["optimizer"]["state"][0]["step"] == 10
    assert torch.equal(resumed["optimizer"]["state"][0]["exp_avg_sq"], whole["optimizer"]["state"][0]["exp_avg_sq"])


def test_ctrl_c_saves_last_pt_and_the_suggested_resume_continues_the_run(shapes_dir, cache_dir, tmp_path):
    # the process presses Ctrl-C on itself while the third training batch is being prepared
    patch = """
        import os, signal
        from petclassifier.data.transforms import Preprocessing
        crop, calls = Preprocessing.train_batch, []
        def crop_then_interrupt(self, x, generator):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return crop(self, x, generator)
        Preprocessing.train_batch = crop_then_interrupt
    """
    out = tmp_path / "run"
    proc = launch(tmp_path, patch, {**CFG, "save_every": 0, "data_dir": shapes_dir, "cache_dir": cache_dir,
                                    "out": out})
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and (stdout + stderr).count("interrupted") == 1  # said once, with the way on
    assert "\r" not in stdout + stderr  # no progress bars in a log: output is not a terminal
    said = f"interrupted: saved {out / 'last.pt'} after step 3 of epoch 1; continue with --resume {out}"
    assert said in stdout.splitlines(), stdout  # a line of its own
    ckpt = load_checkpoint(out / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 3)  # the interrupted step was finished, then saved
    assert not (out / "metrics.jsonl").exists()

    # exactly what it suggests, from another folder and with no dataset flag: the run's own settings come back
    resumed = subprocess.run([sys.executable, "-m", "petclassifier", "train", "--resume", str(out)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'last.pt'} after step 3 of epoch 1" in resumed.stdout.splitlines()
    assert [r["epoch"] for r in rows(out)] == [1, 2]
    assert json.loads((out / "config.json").read_text())["data_dir"] == str(shapes_dir)


def test_resume_refuses_a_contradicting_flag_and_stretches_the_schedule_for_more_epochs(shapes_dir, cache_dir,
                                                                                         tmp_path, capsys):
    out = tmp_path / "run"
    train(**{**CFG, "epochs": 2, "save_every": 0}, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(out))
    other = make_folder(tmp_path / "other", per_class=4)
    for flags, message in (({"data_dir": str(other)}, "--data-dir"), ({"lr": 0.1}, "--lr 0.1"),
                           ({"model": "resnet18"}, "--model resnet18"), ({"epochs": 1}, "can only be raised")):
        with pytest.raises(UserError, match=message):
            train(resume=str(out), **flags)
    capsys.readouterr()
    train(resume=str(out), epochs=3)  # nothing else repeated: dataset, model and recipe come from the run
    said = capsys.readouterr().out
    assert "the learning-rate schedule is stretched from the run's 2 epochs to 3" in said
    assert [r["epoch"] for r in rows(out)] == [1, 2, 3]
    assert load_checkpoint(out / "last.pt")["config"]["epochs"] == 3


def test_resume_of_a_dataset_changed_on_disk_or_of_a_best_pt_is_a_clear_error(shapes_dir, cache_dir, tmp_path):
    data = make_folder(tmp_path / "photos", per_class=6)
    out = tmp_path / "run"
    train(**{**CFG, "epochs": 1, "save_every": 0}, data_dir=str(data), cache_dir=cache_dir, out=str(out))
    (data / "disc").rename(data / "circle")
    with pytest.raises(UserError, match="trained on other classes than the photos found now"):
        train(resume=str(out / "last.pt"), epochs=2)  # a finished run goes on only with more epochs
    with pytest.raises(UserError, match="holds no training state"):
        train(resume=str(out / "best.pt"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shapes_dir, cache_dir, tmp_path, monkeypatch):
    forward, calls = torch.nn.CrossEntropyLoss.forward, []

    def nan_at_training_step_8(self, logits, labels):
        loss = forward(self, logits, labels)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 8:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_at_training_step_8)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="last good state"):
        train(**CFG, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(out))
    ckpt = load_checkpoint(out / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)  # saved after step 7; step 8 was never taken
    assert all(v.isfinite().all() for v in ckpt["model_state"].values() if v.is_floating_point())
    assert [r["epoch"] for r in rows(out)] == [1]


def test_fast_path_resumed_run_computes_the_same_views(shapes_dir, cache_dir, tmp_path, monkeypatch):
    # Each augmented view of the frozen features is computed when an epoch first needs it: a run resumed at
    # epoch 3 must compute views 1 and 2 in order, with the same random crops as the uninterrupted run.
    cfg = {**CFG, "model": "efficientnet_lite0", "pretrained": True, "trainable_stages": 1, "augment_views": 3,
           "image_size": 48, "epochs": 3, "save_every": 0}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(**cfg, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(whole))
    one_epoch, calls = petclassifier.training.epochs.train_one_epoch, []

    def interrupt_before_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return one_epoch(*args, **kwargs)

    monkeypatch.setattr(petclassifier.training.epochs, "train_one_epoch", interrupt_before_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(**cfg, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(cut))
    monkeypatch.undo()
    train(**cfg, data_dir=str(shapes_dir), cache_dir=cache_dir, resume=str(cut / "last.pt"))
    assert rows(cut) == rows(whole)
    resumed, uninterrupted = load_checkpoint(cut / "last.pt"), load_checkpoint(whole / "last.pt")
    for key, value in uninterrupted["model_state"].items():
        assert torch.equal(resumed["model_state"][key], value), key


def test_ctrl_c_during_a_frozen_pass_stops_within_a_batch():
    """A frozen pass is work redone on resume, not a step to finish: Ctrl-C stops it at once, even while training's
    handler (save after this step) is in place, which is then back for the steps."""
    from petclassifier.data.store import FeatureStore
    from petclassifier.engine.frozen import frozen_features
    from petclassifier.training.resilience import StopRequest

    batches = []

    def frozen(x):
        batches.append(len(x))
        if len(batches) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C during the second batch
        return x.float().mean((2, 3), keepdim=True)

    images = torch.zeros(40 * 64, 3, 4, 4, dtype=torch.uint8)  # 40 batches of the CPU's 64
    with StopRequest() as stop, FeatureStore("unused", budget=1 << 30) as store:
        handler = signal.getsignal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            frozen_features(Frozen(frozen), images, lambda x, start: x, torch.device("cpu"),
                            "frozen features (train, view 2/4)", store)
        assert len(batches) <= 3 and signal.getsignal(signal.SIGINT) == handler and not stop.requested


class Frozen(torch.nn.Module):
    """A stand-in for the frozen stages that runs `forward` as given."""

    def __init__(self, forward):
        super().__init__()
        self.run = forward

    def forward(self, x):
        return self.run(x)


@pytest.mark.parametrize("view", [1, 2])
def test_ctrl_c_in_a_frozen_pass_of_a_training_run_says_how_to_go_on_once(shapes_dir, cache_dir, tmp_path, view):
    """The whole command: a view's pass is cut short and one line says how to go on: in the first view's pass
    (nothing saved yet) run the command again, in the second's (after epoch 1) --resume, which then finishes."""
    patch = f"""
        import os, signal
        import petclassifier.engine.frozen as frozen
        frozen.inference_batch_size = lambda *args: 2  # 11 batches a pass over the 22 training photos
        shown, passes = frozen.progress, []
        def press_ctrl_c_in_the_training_pass(items, desc="", **kwargs):
            passes.append(desc)
            for i, item in enumerate(shown(items, desc=desc, **kwargs)):
                # the training photos' pass of the view epoch {view} trains on: computed once training has begun
                if "(train," in desc and sum("(train," in d for d in passes) == {view}:
                    print("train pass batch", i + 1, flush=True)
                    if i == 1:
                        os.kill(os.getpid(), signal.SIGINT)
                yield item
        frozen.progress = press_ctrl_c_in_the_training_pass
    """
    cfg = {**CFG, "model": "efficientnet_lite0", "pretrained": True, "trainable_stages": 1, "image_size": 48,
           "save_every": 0, "augment_views": 2}
    run = tmp_path / "run"
    proc = launch(tmp_path, patch, {**cfg, "data_dir": shapes_dir, "cache_dir": cache_dir, "out": run})
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert stdout.count("train pass batch") <= 3, stdout  # not the whole pass of 11 batches
    said = [line for line in (stdout + stderr).splitlines() if "interrupt" in line or "stopping" in line]
    if view == 1:
        assert said == ["interrupted before the first epoch ended, so there is nothing to resume: run the same "
                        "command again; the photos decoded and the frozen views finished so far are kept in the "
                        "cache and not computed again"], stdout + stderr
    else:
        assert said == [f"interrupted: {run / 'last.pt'} holds the run after epoch 1; continue with --resume {run}"], \
            stdout + stderr
        summary = train(**{**cfg, "data_dir": str(shapes_dir), "cache_dir": cache_dir, "resume": str(run)})
        assert summary["best_epoch"] in (1, 2) and (run / "summary.json").is_file()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


@pytest.mark.parametrize("save_seconds", [0.0, 3600.0])
def test_short_epochs_write_their_checkpoints_at_the_end_and_best_pt_holds_the_best_epoch(
        shapes_dir, cache_dir, tmp_path, monkeypatch, save_seconds):
    monkeypatch.setattr(petclassifier.training.epochs, "SAVE_SECONDS", save_seconds)
    written = []
    real = petclassifier.training.epochs.save_checkpoint
    monkeypatch.setattr(petclassifier.training.epochs, "save_checkpoint",
                        lambda payload, path: written.append(path.name) or real(payload, path))
    out = tmp_path / "run"
    train(**{**CFG, "epochs": 4, "save_every": 0}, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(out))
    # each epoch's end once 30 s passed since the last write (here: at once, or never before the last epoch)
    assert written.count("last.pt") == (4 if save_seconds == 0 else 1) and "best.pt" in written
    assert written.count("best.pt") <= written.count("last.pt")
    accuracy = [row["val_accuracy"] for row in rows(out)]
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert best["metrics"]["val_accuracy"] == max(accuracy) == last["best_accuracy"]
    assert best["metrics"]["epoch"] == 1 + accuracy.index(max(accuracy)) or best["metrics"]["val_loss"] <= min(
        row["val_loss"] for row in rows(out) if row["val_accuracy"] == max(accuracy))
