import pickle
import signal
import subprocess
import sys

import pytest
import torch

from petclassifier.data.transforms import Preprocessing
from petclassifier.errors import UserError
from petclassifier.models.checkpoint import (
    checkpoint_file,
    describe,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from petclassifier.models.registry import build_model

from .conftest import ROOT


def payload(model_name="smallcnn", classes=("a", "b")):
    model = build_model(model_name, len(classes))
    return {"model_name": model_name, "class_names": list(classes),
            "preprocessing": Preprocessing.for_model(model_name, 32).as_dict(), "model_state": model.state_dict()}


def test_save_is_atomic_and_loads_back(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(payload(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left behind
    ckpt = load_checkpoint(path)
    model, prep = model_from_checkpoint(ckpt)
    assert prep.crop == 32 and ckpt["versions"]["torch"] == str(torch.__version__)


class Evil:
    def __reduce__(self):
        return (print, ("this ran while unpickling",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({**payload(), "extra": Evil()}, path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)
    assert "this ran" not in capsys.readouterr().out


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pt"
    save_checkpoint(payload(), path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_checkpoint_for_another_model_is_a_clear_error(tmp_path):
    ckpt = payload()
    ckpt["model_name"] = "efficientnet_lite0"
    with pytest.raises(UserError, match="do not fit"):
        model_from_checkpoint(ckpt)


def test_plain_pickle_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps({"hello": 1}))
    with pytest.raises(UserError):
        load_checkpoint(path)


@pytest.mark.parametrize("name, content, reason", [
    ("empty.pt", b"", "empty file"),
    ("notes.txt", b"shopping list: cat food\n", "not a PyTorch file"),
    ("config.json", b'{"model": "smallcnn", "epochs": 3}\n', "not a PyTorch file"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == f"{path} is not a petclassifier checkpoint ({reason})"


def test_a_pytorch_file_without_the_checkpoint_fields_says_what_is_missing(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_model("smallcnn", 2).state_dict(), path)
    with pytest.raises(UserError, match="weights.pt is not a petclassifier checkpoint \\(no format_version, "):
        load_checkpoint(path)


def test_a_run_folder_means_its_best_pt_else_its_last_pt(tmp_path):
    with pytest.raises(UserError, match="no best.pt or last.pt"):
        checkpoint_file(tmp_path)
    save_checkpoint(payload(), tmp_path / "last.pt")
    assert checkpoint_file(tmp_path) == tmp_path / "last.pt"
    save_checkpoint(payload(), tmp_path / "best.pt")
    assert checkpoint_file(tmp_path) == tmp_path / "best.pt"
    assert checkpoint_file(tmp_path / "other.pt") == tmp_path / "other.pt"  # a file path is left to load_checkpoint


def test_describe_names_the_task_and_the_classes():
    species_of = {"abyssinian": "cat", "beagle": "dog"}
    assert describe({"class_names": ["cat", "dog"], "task": "species", "species_of": species_of}) == "species: cat, dog"
    breeds = {"class_names": [f"breed{i}" for i in range(37)], "task": "breed", "species_of": species_of}
    assert describe(breeds) == "breed: 37 classes: breed0, breed1, breed2, ..."
    assert describe({"class_names": ["disc", "square"], "task": "breed", "species_of": {}}) == "folder: disc, square"


def test_checkpoint_for_another_class_list_is_a_clear_error():
    ckpt = payload(classes=("a", "b", "c"))
    ckpt["class_names"] = ["a", "b"]
    with pytest.raises(UserError, match="do not fit"):
        model_from_checkpoint(ckpt)


def test_an_error_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({**payload(), "epoch": 1}, path)

    def half_then_disk_full(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_then_disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({**payload(), "epoch": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temporary file is removed
    assert load_checkpoint(path)["epoch"] == 1


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({**payload(), "epoch": 1}, path)
    # a second save writes half its bytes, then stalls until SIGKILL
    code = f"""
import sys, time, torch
from petclassifier.models.checkpoint import save_checkpoint
from tests.test_checkpoint import payload
def half_then_stall(obj, f):
    f.write(b"PK\\x03\\x04 half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
torch.save = half_then_stall
save_checkpoint({{**payload(), "epoch": 2}}, {str(path)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert load_checkpoint(path)["epoch"] == 1  # only a hidden .last.pt.*.tmp is left beside it


def test_a_checkpoint_of_the_flat_package_still_predicts_the_same(tmp_path):
    """best.pt written by the version before the package had folders (smallcnn, 2 shapes), and what it predicted then:
    a checkpoint holds no module paths, so it loads and answers the same."""
    import json

    from petclassifier import PetClassifier
    from petclassifier.data.images import load_image

    from .conftest import ROOT, make_folder

    saved = ROOT / "tests" / "data" / "flat-package-checkpoint"
    expected = json.loads((saved / "expected.json").read_text())
    photos = make_folder(tmp_path / "shapes", per_class=6)  # drawn the same way, seeded
    clf = PetClassifier.from_checkpoint(saved / "best.pt", device="cpu")
    probabilities = clf.probabilities([load_image(photos / p) for p in expected["photos"]])
    torch.testing.assert_close(probabilities, torch.tensor(expected["probabilities"]), atol=1e-5, rtol=0)
