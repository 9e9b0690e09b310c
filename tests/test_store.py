"""Rows on disk read batch by batch, and frozen features kept within a memory budget."""

import json
import os
import pickle

import pytest
import torch

from petclassifier import train
from petclassifier.data import store
from petclassifier.data.store import Batches, FeatureStore, RowFile

from .conftest import ROOT
from .test_train import TINY


def test_row_file_reads_what_was_written_by_any_index(tmp_path):
    rows = torch.arange(7 * 2 * 3, dtype=torch.float16).view(7, 2, 3)
    f = RowFile.create(tmp_path / "rows", (2, 3), torch.float16, rows.split(3))
    assert f.shape == (7, 2, 3) and len(f) == 7
    assert torch.equal(f.load(), rows) and torch.equal(f[2], rows[2]) and torch.equal(f[-1], rows[-1])
    assert torch.equal(f[1:5], rows[1:5]) and torch.equal(f[::3], rows[::3])
    assert torch.equal(f[torch.tensor([6, 0, 3])], rows[[6, 0, 3]])
    with pytest.raises(IndexError):
        f[torch.tensor([7])]
    again = pickle.loads(pickle.dumps(f))  # as a DataLoader worker receives it: it opens the file for itself
    assert torch.equal(again.load(), rows)


def test_batches_give_each_rank_its_share_in_order():
    rows, labels = torch.arange(10).view(10, 1), torch.arange(10)
    assert [y.tolist() for _, y in Batches(rows, labels, 3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [y.tolist() for _, y in Batches(rows, labels, 2, rank=1, world=3)] == [[1, 4], [7]]
    assert len(Batches(rows, labels, 3)) == 4


def test_features_past_the_budget_go_to_disk_as_the_same_half_precision_rows(tmp_path):
    blocks = [torch.randn(4, 5, 2, 2) for _ in range(3)]
    with FeatureStore(tmp_path / "features", budget=12 * 20 * 2) as fits:
        kept = fits.keep(iter(blocks))
    with FeatureStore(tmp_path / "features", budget=12 * 20 * 2 - 1) as spills:
        spilled = spills.keep(iter(blocks))
        assert isinstance(kept, torch.Tensor) and isinstance(spilled, RowFile)
        assert kept.dtype == torch.float16 and torch.equal(spilled.load(), kept)
        assert torch.equal(kept.float(), torch.cat(blocks).half().float())
    assert list((tmp_path / "features").iterdir()) == []  # features kept under no key go with their run


def test_features_kept_under_a_key_are_found_by_a_later_store_in_memory_or_on_disk(tmp_path):
    blocks = [torch.randn(4, 5, 2, 2) for _ in range(3)]
    with FeatureStore(tmp_path / "features") as first:
        kept = first.keep(iter(blocks), key="abc")
        assert first.find("other", torch.device("cpu")) is None
    with FeatureStore(tmp_path / "features") as later:
        assert torch.equal(later.find("abc", torch.device("cpu")), kept)
    with FeatureStore(tmp_path / "features", budget=0) as later:
        assert torch.equal(later.find("abc", torch.device("cpu")).load(), kept)
    (tmp_path / "features" / "abc.f16").write_bytes(b"cut short")  # a damaged entry is computed again
    with FeatureStore(tmp_path / "features") as later:
        assert later.find("abc", torch.device("cpu")) is None


def test_features_computed_in_bfloat16_are_kept_and_found_in_it_and_entries_without_a_dtype_are_not_read(tmp_path):
    """A GPU's autocast computes bfloat16: kept as computed, never rounded again into float16 (nor mistaken for it)."""
    import json

    blocks = [torch.randn(4, 5, 1, 1, dtype=torch.bfloat16) * 1e5 for _ in range(2)]  # past float16's 65,504
    with FeatureStore(tmp_path / "features") as first:
        kept = first.keep(iter(blocks), key="gpu")
    assert kept.dtype == torch.bfloat16 and torch.equal(kept, torch.cat(blocks)) and kept.isfinite().all()
    assert json.loads((tmp_path / "features" / "gpu.json").read_text())["dtype"] == "bfloat16"
    for budget in (None, 0):  # in memory, and read back from disk
        with FeatureStore(tmp_path / "features", budget=budget) as later:
            found = later.find("gpu", torch.device("cpu"))
            assert torch.equal(found if budget is None else found.load(), kept)
    meta = tmp_path / "features" / "gpu.json"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "dtype"}))
    with FeatureStore(tmp_path / "features") as later:  # written by an earlier version: computed again
        assert later.find("gpu", torch.device("cpu")) is None


def test_features_a_killed_run_left_on_disk_are_removed_by_the_next_run_that_spills(tmp_path):
    import os

    folder = tmp_path / "features"
    folder.mkdir()
    abandoned = folder / "0.f16.tmp999999999"  # a killed run's file (no such process), as older versions named it
    killed = folder / f"1.f16.tmp{store.HOST}-999999999"
    running = folder / f"0.f16.tmp{store.HOST}-{os.getppid()}"  # another run's, still going
    elsewhere = folder / "2.f16.tmpanother-machine-999999999"  # a process of a machine sharing the folder
    for f in (abandoned, killed, running, elsewhere):
        f.write_bytes(b"half")
    with FeatureStore(folder, budget=0) as spills:
        spills.keep(iter([torch.randn(2, 3)]))
        assert not abandoned.exists() and not killed.exists() and running.exists() and elsewhere.exists()


def test_the_cache_stays_within_its_limit_removing_the_least_recently_used_first(tmp_path):
    import os

    root = tmp_path / "cache"
    (root / "features").mkdir(parents=True)
    for age, name in enumerate(("new", "middle", "old")):
        (root / "features" / f"{name}.f16").write_bytes(bytes(1000))
        (root / "features" / f"{name}.json").write_text("{}")
        os.utime(root / "features" / f"{name}.f16", (1e9 - age * 100, 1e9 - age * 100))
    (root / store.LIMIT_FILE).write_text('{"bytes": 2500}')
    store.trim(root)
    assert sorted(p.name for p in (root / "features").iterdir()) == ["middle.f16", "middle.json", "new.f16",
                                                                    "new.json"]
    store.IN_USE.add(root / "features" / "middle.f16")  # a file this process reads is never removed
    (root / store.LIMIT_FILE).write_text('{"bytes": 10}')
    store.trim(root)
    assert sorted(p.name for p in (root / "features").iterdir()) == ["middle.f16", "middle.json"]


def test_training_from_features_on_disk_equals_training_from_memory(shapes_dir, cache_dir, tmp_path, monkeypatch):
    cfg = {**TINY, "model": "efficientnet_lite0", "pretrained": True, "trainable_stages": 1, "augment_views": 2,
           "image_size": 48, "epochs": 2, "data_dir": str(shapes_dir), "cache_dir": cache_dir}
    kept = []
    place = FeatureStore.within_budget
    monkeypatch.setattr(FeatureStore, "within_budget",
                        lambda self, rows, device: kept.append(place(self, rows, device)) or kept[-1])
    train(**cfg, out=str(tmp_path / "memory"))
    assert all(isinstance(f, torch.Tensor) for f in kept)
    kept.clear()
    monkeypatch.setattr(store, "MEMORY_BUDGET", 0)
    train(**cfg, out=str(tmp_path / "disk"))
    assert kept and all(isinstance(f, RowFile) for f in kept)

    def rows(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        timings = ("seconds", "elapsed", "time")
        return [{k: v for k, v in json.loads(line).items() if k not in timings} for line in lines]

    assert rows("disk") == rows("memory")


def test_a_head_only_run_caches_pooled_features(shapes_dir, cache_dir, tmp_path, monkeypatch):
    shapes = []
    keep = FeatureStore.keep

    def record(self, blocks, key=None):
        out = keep(self, blocks, key)
        shapes.append(tuple(out.shape[1:]))
        return out

    monkeypatch.setattr(FeatureStore, "keep", record)
    train(**{**TINY, "model": "efficientnet_lite0", "pretrained": True, "trainable_stages": 0, "image_size": 48,
             "epochs": 1}, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(tmp_path / "run"))
    assert shapes and set(shapes) == {(1280, 1, 1)}  # not [1280, 2, 2]: the head averages the maps first


def test_a_row_file_that_never_opened_is_closed_and_collected_quietly(tmp_path):
    """Ctrl-C (or a missing file) inside the constructor leaves an object without its descriptor; closing it and
    collecting it must not add `Exception ignored in RowFile.__del__` to the user's screen."""
    with pytest.raises(FileNotFoundError):
        RowFile(tmp_path / "gone", (2,), torch.float16, 3)
    half = RowFile.__new__(RowFile)  # what the constructor leaves when interrupted before the open
    half.close()
    half.__del__()


def test_loading_a_row_file_holds_one_copy_of_its_rows_in_memory(tmp_path):
    """What the GPU path does with a split of decoded photos (load them whole, then to the device): the rows are read
    straight into the tensor, so the process grows by the file's size, not twice it (measured in a fresh process)."""
    import subprocess
    import sys

    code = ("import resource, sys, torch\nfrom petclassifier.data.store import RowFile\n"
            "path, n = sys.argv[1], 800\n"
            "with open(path, 'wb') as f:\n"
            "    for i in range(0, n, 50):\n"
            "        f.write(torch.full((50, 3, 260, 260), i % 251, dtype=torch.uint8).numpy().tobytes())\n"
            "rows = RowFile(path, (3, 260, 260), torch.uint8, n)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "x = rows.load()\n"
            "grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / rows.nbytes\n"
            "print(grown, x[799, 2, 259, 259].item(), x.shape[0])\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "rows.u8")], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out[1:] == [str(750 % 251), "800"] and float(out[0]) < 1.4, out


def test_a_frozen_pass_short_of_device_memory_goes_on_in_smaller_parts_with_the_same_features(tmp_path, capsys):
    from torch import nn

    from petclassifier.engine.frozen import frozen_features

    class Frozen(nn.Module):
        batch_size = 8  # the pass's batch, which seeds its random views

        def forward(self, x):
            if len(x) > 3:  # what a GPU with little free memory does
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return x.mean((2, 3), keepdim=True) * 2

    images = torch.rand(20, 3, 4, 4)
    with FeatureStore(tmp_path / "features") as store:
        got = frozen_features(Frozen(), images, lambda x, start: x + start, torch.device("cpu"), "test", store)
    expected = torch.cat([(images[i : i + 8] + i).mean((2, 3), keepdim=True) * 2 for i in range(0, 20, 8)])
    assert torch.equal(got, expected.half())  # the same as in one pass a batch
    assert "frozen pass: 2 photos at a time fit the device's free memory" in capsys.readouterr().out
