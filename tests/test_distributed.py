"""torchrun with 2 CPU processes (gloo), on one machine or on two, trains the same model as one process with the
same global batch."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import petclassifier.training.prepare
from petclassifier import distributed, train
from petclassifier.errors import UserError
from petclassifier.models.checkpoint import load_checkpoint
from petclassifier.models.registry import build_model

from .conftest import ROOT, make_folder

# Fast path, linear head only: no BatchNorm trains, so batch statistics cannot differ between ranks.
CFG = dict(dataset="folder", model="efficientnet_lite0", pretrained=True, trainable_stages=0, image_size=32,
           augment_views=2, epochs=2, batch_size=8, lr=1e-2, workers=0)
FLAGS = ["--dataset", "folder", "--model", "efficientnet_lite0", "--trainable-stages", "0", "--image-size", "32",
         "--augment-views", "2", "--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--workers", "0",
         "--backend", "torch"]  # as the one-process reference computes its features
PHOTOS = 72  # make_folder's two classes of 12, in train/, val/ and test/
# Each rank averages its half of a batch; DDP then averages the two: the same gradient as one process,
# up to float32 rounding in a different order (measured: 4e-9 on the weights; without DDP's averaging
# the losses already differ by 1e-4).
TOLERANCE = 1e-6  # on every weight after 2 epochs

# Dropout masks are drawn per rank and cannot match one process's: both runs switch dropout off.
NO_DROPOUT = """
import sys
from torch import nn
import petclassifier.training.prepare as t
build = t.build_model
def build_without_dropout(*args, **kwargs):
    model = build(*args, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model
t.build_model = build_without_dropout
"""
# Each photo's header check and each decode appends a line to the file COUNTS (relative: one file per machine).
# A decode into the cache starts slowly, so that a process that did not wait would arrive before the cache exists.
COUNTING = """
import time
import petclassifier.data.cache, petclassifier.data.datasets, petclassifier.data.images
d, c = sys.modules["petclassifier.data.datasets"], sys.modules["petclassifier.data.cache"]
i = sys.modules["petclassifier.data.images"]
decoder = c.decoded_batches
def slow_start(*args, **kwargs):
    time.sleep(0.5)
    return decoder(*args, **kwargs)
c.decoded_batches = slow_start
def counted(fn, what):
    def count(*args, **kwargs):
        with open(COUNTS, "a") as f:
            f.write(what + "\\n")
        return fn(*args, **kwargs)
    return count
d.check_image = counted(d.check_image, "check")
i.decoded_square = counted(i.decoded_square, "decode")  # in the decoding processes too: they are forked
# and each row the frozen stages compute, a line "rows<rank>"
import os
fast = t.fast_frozen
class Counted(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
    def forward(self, x):
        with open(COUNTS, "a") as f:
            f.write(f"rows{os.environ['RANK']}\\n" * len(x))
        return self.inner(x)
t.fast_frozen = lambda *args, **kwargs: Counted(fast(*args, **kwargs))
"""
MAIN = "from petclassifier.cli import main\nsys.exit(main(['train', *sys.argv[1:]]))\n"
# the launched processes import this checkout, not an installed copy; one thread each, as the reference run
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("shapes"), splits=("train", "val", "test"))  # test/: a refit


@pytest.fixture(scope="module")
def one_process(photos, tmp_path_factory):
    """The reference: the same training in this process, without torchrun."""
    out = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        module = petclassifier.training.prepare
        patch.setattr(module, "build_model", module.build_model)  # put back afterwards
        exec(NO_DROPOUT, {})  # the patch of the launched script, in this process
        torch.set_num_threads(1)
        try:
            train(**CFG, data_dir=str(photos), cache_dir=str(out / "cache"), out=str(out / "run"))
        finally:
            torch.set_num_threads(threads)
    return out / "run"


def training_script(folder, counts="counts") -> str:
    script = folder / "train_counted.py"
    script.write_text(NO_DROPOUT + f"COUNTS = {str(counts)!r}\n" + COUNTING + MAIN)
    return str(script)


def counts(path) -> dict:
    lines = path.read_text().split()
    return {what: lines.count(what) for what in ("check", "decode")}


def rows_per_rank(path) -> list[int]:
    lines = path.read_text().split()
    return [lines.count(f"rows{rank}") for rank in range(2)]


def frozen_rows(log: str) -> tuple[int, int]:
    """(passes, rows) of the frozen passes a run's log reports."""
    passes = [int(n) for n in re.findall(r"^frozen features \(.*\): (\d+) photos in", log, re.M)]
    return len(passes), sum(passes)


def assert_same_training(run, one) -> None:
    rows = {name: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for name, d in (("ddp", run), ("one", one))}
    assert [r["epoch"] for r in rows["ddp"]] == [1, 2]
    for a, b in zip(rows["ddp"], rows["one"]):  # metrics.jsonl rounds to 5 decimals
        for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], abs=2e-5), key
    ddp, ref = load_checkpoint(run / "last.pt"), load_checkpoint(one / "last.pt")
    assert len(ddp["ranks"]) == 2 and len(ref["ranks"]) == 1
    diff = max((ddp["model_state"][k] - v).abs().max().item() for k, v in ref["model_state"].items()
               if v.is_floating_point())
    assert diff < TOLERANCE, diff
    # the calibration temperature is fitted on every rank's share of the validation photos, as one process fits it
    best = [load_checkpoint(d / "best.pt") for d in (run, one)]
    assert best[0]["temperature"] == pytest.approx(best[1]["temperature"], rel=1e-4)
    # then the head trains again on train + val photos, each rank on its share of every batch, as one process does
    assert best[0]["refit"] and best[1]["refit"]
    diff = max((best[0]["model_state"][k] - v).abs().max().item() for k, v in best[1]["model_state"].items()
               if v.is_floating_point())
    assert diff < TOLERANCE, diff


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


def test_per_machine_gives_each_process_its_machines_result_or_error(monkeypatch):
    """Ranks 0-1 on one machine and 2-3 on another: only rank 2 runs the function there; rank 3 gets its result."""
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    contributed = {}

    def on_rank(r: int, fn, first_sent=None):
        monkeypatch.setattr(distributed, "rank", lambda: r)
        monkeypatch.setattr(distributed, "local_rank", lambda: r % 2)

        def gather(obj, patient=False):  # every rank's contribution: rank 2's is `first_sent`, unless this is rank 2
            assert patient  # through the group that waits as long as decoding takes
            contributed[r] = obj
            shares = [("machine 0", None), (None, None), first_sent, (None, None)]
            shares[r] = obj
            return shares

        monkeypatch.setattr(distributed, "gather", gather)
        return distributed.per_machine(fn)

    def not_here():
        raise AssertionError("ran on a machine's second process")

    def broken():
        raise ValueError("bad state")

    assert on_rank(2, lambda: "machine 1") == "machine 1"
    assert on_rank(3, not_here, ("machine 1", None)) == "machine 1"
    with pytest.raises(UserError, match="no folder"):  # the others stop with the first's error rather than wait
        on_rank(3, not_here, (None, UserError("no folder /photos")))
    with pytest.raises(ValueError):  # the first raises its own error, and sends a picklable pointer to it
        on_rank(2, broken)
    assert isinstance(contributed[2][1], RuntimeError) and "ValueError: bad state" in str(contributed[2][1])


def test_only_the_decoding_waits_are_long_and_every_other_collective_times_out_in_minutes(monkeypatch):
    """The others wait while a machine's first process decodes a large set (distributed.WAIT, through a group of
    its own); every other collective of the run waits COLLECTIVE_WAIT, minutes, for a rank that died or hung."""
    seen, groups = {}, []
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(distributed.dist, "new_group", lambda **kwargs: groups.append(kwargs) or "patient")
    assert distributed.setup(torch.device("cpu")) == (torch.device("cpu"), True)
    assert seen["timeout"] is distributed.COLLECTIVE_WAIT and distributed.COLLECTIVE_WAIT.total_seconds() <= 600
    assert groups == [{"timeout": distributed.WAIT}] and distributed._patient == "patient"
    waited = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "barrier", lambda group=None: waited.append(group))
    monkeypatch.setattr(distributed, "local_rank", lambda: 1)
    with distributed.local_main_first():  # a machine's other process waits for its first one: patiently
        pass
    distributed.barrier()
    assert waited == ["patient", None]
    monkeypatch.setattr(distributed, "_patient", None)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_sync_batchnorm_on_gpus_computes_the_same_function(name, monkeypatch):
    """timm's BatchNormAct2d keeps its activation (ReLU6 in EfficientNet-Lite) as a SyncBatchNorm."""
    model = build_model(name, 5, pretrained=name == "efficientnet_lite0")
    generator = torch.Generator().manual_seed(0)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:  # statistics unlike the defaults, so that a normalisation left out or changed shows
        m.running_mean.normal_(0, 0.3, generator=generator)
        m.running_var.uniform_(0.5, 2.0, generator=generator)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        expected = model.eval()(x)
    # wrap on a GPU rank of two, without a process group: SyncBatchNorm in eval mode needs none, and runs on CPU
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "DistributedDataParallel", lambda module, device_ids: module)
    wrapped = distributed.wrap(model, torch.device("cuda", 0))
    synced = [m for m in wrapped.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(synced) == len(norms) and all(isinstance(m, nn.SyncBatchNorm) for m in synced)
    with torch.no_grad():
        torch.testing.assert_close(wrapped.eval()(x), expected)


def test_torchrun_two_gloo_processes_match_one_process(photos, one_process, tmp_path):
    """On one machine the first process alone checks and decodes the photos; the other reads its cache."""
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               training_script(tmp_path, tmp_path / "counts"), *FLAGS, "--data-dir", str(photos),
                               "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "ddp")],
                              cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "x 2 processes" in launched.stdout and launched.stdout.count("epoch   1") == 1  # rank 0 alone logs
    assert counts(tmp_path / "counts") == {"check": PHOTOS, "decode": PHOTOS}  # each photo once, not once a process
    # each rank computed every other batch of each frozen pass (batches of 8 photos), and received the others' rows
    passes, rows = frozen_rows(launched.stdout)
    computed = rows_per_rank(tmp_path / "counts")
    assert passes >= 4 and sum(computed) == rows and abs(computed[0] - computed[1]) <= 8 * passes, computed
    assert_same_training(tmp_path / "ddp", one_process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_torchrun_on_two_machines_matches_one_process(photos, one_process, tmp_path, rendezvous):
    """Two torchrun "machines" of one process each, on 127.0.0.1, each in its own folder: its own disk.

    Relative --out, --cache-dir and counts file land in each machine's folder, so rank 0's run folder is not
    visible on the other machine, and each machine decodes into its own cache.
    """
    port, script = free_port(), training_script(tmp_path)
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    launched = []
    try:
        for node, folder in enumerate(machines):
            folder.mkdir()
            meet = (["--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port)]
                    if rendezvous == "static" else
                    ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "pets"])
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", *meet,
                       script, *FLAGS, "--data-dir", str(photos), "--cache-dir", "cache", "--out", "run"]
            with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
                launched.append(subprocess.Popen(command, cwd=folder, stdout=out, stderr=err, env=ENV))
        # until both end, or one fails: the other's torchrun would wait minutes for it at its exit barrier
        deadline = time.monotonic() + 300
        while None in (codes := [p.poll() for p in launched]) and not any(codes) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for p in launched:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(f / "stdout").read_text() + (f / "stderr").read_text() for f in machines]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    # rank 0 logs and writes the run folder; static rendezvous gives it to --node-rank 0, c10d to either machine
    first = [i for i, f in enumerate(machines) if "x 2 processes" in (f / "stdout").read_text()]
    assert len(first) == 1 and (rendezvous == "c10d" or first == [0])
    assert [(f / "run").exists() for f in machines] == [i == first[0] for i in range(2)]
    for f in machines:  # each machine checked and decoded every photo once, into its own cache
        assert counts(f / "counts") == {"check": PHOTOS, "decode": PHOTOS}
    assert_same_training(machines[first[0]] / "run", one_process)


def test_machines_that_see_different_photos_stop_with_the_photos_named(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    seen = {"a.jpg", "b.jpg", "c.jpg"}
    monkeypatch.setattr(distributed, "gather", lambda paths: [paths, sorted(seen - {"b.jpg"})])  # unreadable there
    with pytest.raises(UserError, match=r"the machines see different photos \(b\.jpg\)"):
        distributed.check_same_photos(sorted(seen))
    monkeypatch.setattr(distributed, "gather", lambda paths: [paths, list(paths)])
    distributed.check_same_photos(sorted(seen))  # the same everywhere: nothing to say


@pytest.fixture(scope="module")
def three_a_class(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("three"), per_class=3)  # 4 train photos, 2 val: fewer than 3 ranks


def torchrun_three(script: str, photos, out) -> subprocess.CompletedProcess:
    """torchrun of 3 CPU processes on a folder, with no batch flag (the recipe's own); 3 epochs on PyTorch, which
    keeps the test short (no ONNX export in each process)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                           script, "--dataset", "folder", "--data-dir", str(photos), "--model", "efficientnet_lite0",
                           "--image-size", "32", "--workers", "0", "--epochs", "3", "--backend", "torch",
                           "--cache-dir", str(out / "cache"), "--out", str(out / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=480, env=ENV)


def test_three_processes_train_a_folder_of_three_photos_a_class_with_the_recipe_s_own_batch(three_a_class,
                                                                                          tmp_path):
    """The recipe's batch of 8 becomes 9, a multiple of the 3 processes; the rank with no validation photo scores
    none while the others score theirs."""
    script = tmp_path / "train.py"
    script.write_text("import sys\n" + MAIN)
    launched = torchrun_three(str(script), three_a_class, tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "recipe: batches of 9," in launched.stdout and "x 3 processes" in launched.stdout
    assert load_checkpoint(tmp_path / "run" / "best.pt")["config"]["batch_size"] == 9


def test_a_killed_process_makes_the_others_stop_with_one_line(three_a_class, tmp_path):
    """Rank 2 is killed (SIGKILL) as epoch 2 begins: the others stop at their next collective, saying why in one
    line, and torchrun names the rank that died."""
    script = tmp_path / "train.py"
    script.write_text("""import os, signal, sys
import petclassifier.training.epochs as e
one = e.Epochs.train_one
def train_one(self, epoch):
    if epoch == 1 and os.environ["RANK"] == "2":
        os.kill(os.getpid(), signal.SIGKILL)
    return one(self, epoch)
e.Epochs.train_one = train_one
""" + MAIN)
    launched = torchrun_three(str(script), three_a_class, tmp_path)  # the timeout bounds the others' wait
    assert launched.returncode != 0
    said = launched.stdout + launched.stderr
    assert re.search(r"rank\s*: 2 \(local_rank: 2\)\s*\n\s*exitcode\s*: -9", said), said[-3000:]
    stopped = [line for line in said.splitlines() if "another process of this run died or stopped answering" in line]
    assert all(line.startswith("error: process ") for line in stopped), stopped
