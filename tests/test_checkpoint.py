import pickle

import pytest
import torch

from petclassifier.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from petclassifier.errors import UserError
from petclassifier.models import build_model
from petclassifier.transforms import Preprocessing


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
