"""torchrun with 2 CPU processes (gloo) trains the same model as one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from petclassifier import distributed, train
from petclassifier.checkpoint import load_checkpoint

from .conftest import ROOT

# Fast path, linear head only: no BatchNorm trains, so batch statistics cannot differ between ranks.
CFG = dict(dataset="folder", model="efficientnet_lite0", pretrained=True, trainable_stages=0, image_size=32,
           augment_views=2, epochs=2, batch_size=8, lr=1e-2, workers=0)
# Each rank averages its half of a batch; DDP then averages the two: the same gradient as one process,
# up to float32 rounding in a different order (measured: 4e-9 on the weights; without DDP's averaging
# the losses already differ by 1e-4).
TOLERANCE = 1e-6  # on every weight after 2 epochs

# Dropout masks are drawn per rank and cannot match one process's: both runs switch dropout off.
NO_DROPOUT = """
import sys
from torch import nn
import petclassifier.train
t = sys.modules["petclassifier.train"]
build = t.build_model
def build_without_dropout(*args, **kwargs):
    model = build(*args, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model
t.build_model = build_without_dropout
"""


def test_sharded_batches_split_the_global_batch_and_resume_mid_epoch(monkeypatch):
    x, y = torch.arange(22), torch.arange(22)
    one = distributed.ShardedBatches(x, y, batch_size=4, seed=3)
    one.set_position(epoch=1)
    whole = [b for b, _ in one]
    assert len(whole) == 5 and len(torch.cat(whole).unique()) == 20  # the 2 left over are dropped
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for start in (0, 2):
        shares = []
        for r in (0, 1):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            batches = distributed.ShardedBatches(x, y, batch_size=4, seed=3)
            batches.set_position(epoch=1, start=start)
            shares.append([b for b, _ in batches])
        assert len(shares[0]) == 5 - start
        for i, (a, b) in enumerate(zip(*shares)):  # each rank half of each global batch, nothing shared
            assert len(a) == len(b) == 2 and sorted(torch.cat([a, b]).tolist()) == sorted(whole[start + i].tolist())


def test_torchrun_two_gloo_processes_match_one_process(shapes_dir, cache_dir, tmp_path, monkeypatch):
    script = tmp_path / "train_without_dropout.py"
    script.write_text(NO_DROPOUT + "from petclassifier.cli import main\nsys.exit(main(['train', *sys.argv[1:]]))\n")
    flags = ["--dataset", "folder", "--model", "efficientnet_lite0", "--trainable-stages", "0", "--image-size", "32",
             "--augment-views", "2", "--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--workers", "0",
             "--data-dir", str(shapes_dir), "--cache-dir", cache_dir, "--out", str(tmp_path / "ddp")]
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script), *flags], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "x 2 processes" in launched.stdout and launched.stdout.count("epoch   1") == 1  # rank 0 alone logs

    module = sys.modules["petclassifier.train"]
    monkeypatch.setattr(module, "build_model", module.build_model)  # put back after the test
    exec(NO_DROPOUT, {})  # the same patch in this process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(**CFG, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)

    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("ddp", "one")}
    assert [r["epoch"] for r in rows["ddp"]] == [1, 2]
    for a, b in zip(rows["ddp"], rows["one"]):  # metrics.jsonl rounds to 5 decimals
        for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], abs=2e-5), key
    ddp, one = load_checkpoint(tmp_path / "ddp" / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    assert len(ddp["ranks"]) == 2 and len(one["ranks"]) == 1
    diff = max((ddp["model_state"][k] - v).abs().max().item() for k, v in one["model_state"].items()
               if v.is_floating_point())
    assert diff < TOLERANCE, diff
    # the calibration temperature is fitted on every rank's share of the validation photos, as one process fits it
    temperatures = [load_checkpoint(tmp_path / name / "best.pt")["temperature"] for name in ("ddp", "one")]
    assert temperatures[0] == pytest.approx(temperatures[1], rel=1e-4), temperatures
    assert "calibration: temperature" in launched.stdout
