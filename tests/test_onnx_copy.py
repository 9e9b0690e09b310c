"""`predict` from a checkpoint's ONNX copy: the answers PyTorch gives, written once, found again, without PyTorch."""

import json
import subprocess
import sys

import pytest
import torch

from petclassifier.cli import main
from petclassifier.data.transforms import Preprocessing
from petclassifier.inference.onnx_copy import ready_copy
from petclassifier.inference.predict import PetClassifier
from petclassifier.models.registry import build_model

from .conftest import SAMPLE
from .photos import BAD, write_all
from .test_not_a_pet import checkpoint_payload
from .test_predict_inputs import write_checkpoint
from .test_predict_stream import shapes

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
PHOTOS = sorted((SAMPLE / "oxford-iiit-pet" / "images").glob("*.jpg"))[::5][:6]
# run in a fresh interpreter: the command's exit status, then whether PyTorch was ever imported
WITNESS = ("import sys; from petclassifier.cli import main; code = main(sys.argv[1:]); "
           "print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr); sys.exit(code)")


def same_answers(expected, got, tolerance=1e-4):
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert (e.path, e.error, e.not_a_pet) == (g.path, g.error, g.not_a_pet)
        assert [label for label, _ in e.labels] == [label for label, _ in g.labels]
        assert all(abs(p - q) < tolerance for (_, p), (_, q) in zip(e.labels + e.species, g.labels + g.species))


def test_the_copy_answers_what_pytorch_answers(tmp_path):
    """Every part of the answer: the kinds head, flip TTA, a temperature, "not a pet", species, an unreadable file."""
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 2, pretrained=True, imagenet_stages=0, kinds=True)
    payload = checkpoint_payload(model, imagenet_stages=0) | {"kinds": True, "flip_tta": True, "temperature": 1.7}
    payload["preprocessing"] = Preprocessing.for_model("efficientnet_lite0", 96).as_dict()
    from petclassifier.models.checkpoint import save_checkpoint

    save_checkpoint(payload, tmp_path / "best.pt")
    paths = [*PHOTOS, *write_all(tmp_path, {"corrupt.jpg": BAD["corrupt.jpg"]}), PHOTOS[0]]
    expected = PetClassifier.from_checkpoint(tmp_path / "best.pt", device="cpu").predict_paths(paths, workers=0)
    copy = ready_copy(tmp_path / "best.pt", tmp_path / "cache")
    same_answers(expected, copy.predict_paths(paths, workers=2))  # decoded in worker processes
    assert expected[-2].error and any(e.species for e in expected) and any(e.not_a_pet is not None for e in expected)
    assert copy.predict(PHOTOS[1]) == [(label, pytest.approx(p, abs=1e-4)) for label, p in expected[1].labels]


def test_predict_writes_the_copy_once_then_answers_without_pytorch(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "best.pt", ["disc", "square"])  # no ImageNet head: not_a_pet null
    photos = [str(p) for p in shapes(tmp_path / "photos", 40)]  # three batches
    argv = ["predict", "--backend", "onnxruntime", "--cache-dir", str(tmp_path / "cache"), "--json", "--checkpoint"]

    def run(path):
        return subprocess.run([sys.executable, "-c", WITNESS, *argv, str(path), *photos], capture_output=True,
                              text=True, timeout=600)

    first, second = run(checkpoint), run(checkpoint)
    assert first.returncode == 0 and "prepared" in first.stderr and first.stderr.strip().endswith("torch loaded")
    assert second.returncode == 0 and second.stderr.strip() == "no torch"  # the copy alone answered
    assert json.loads(second.stdout) == json.loads(first.stdout)
    assert main([*argv[:-1], "--backend", "torch", "--checkpoint", str(checkpoint), *photos]) == 0
    on_torch = json.loads(capsys.readouterr().out)
    assert [a["predictions"][0]["label"] for a in on_torch] == [a["predictions"][0]["label"] for a in
                                                                 json.loads(second.stdout)]
    assert all(a["not_a_pet"] is None for a in on_torch)
    changed = write_checkpoint(tmp_path / "other" / "best.pt", ["square", "disc"])  # other bytes: a copy of its own
    third = run(changed)
    assert third.returncode == 0 and "prepared" in third.stderr
    assert len(list((tmp_path / "cache" / "onnx" / "copies").iterdir())) == 2


def test_the_copy_runs_on_the_cpu_only(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "best.pt", ["disc", "square"])
    assert main(["predict", "--backend", "onnxruntime", "--device", "cuda", "--checkpoint", str(checkpoint),
                 str(PHOTOS[0])]) == 2
    assert capsys.readouterr().err.strip() == "error: --backend onnxruntime runs on the CPU; use --device cpu (or " \
                                              "--backend torch)"


def test_copies_count_in_the_cache_limit_and_come_back_when_trimmed(tmp_path):
    from petclassifier.data.cache import cache_size, set_cache_limit

    checkpoint = write_checkpoint(tmp_path / "best.pt", ["disc", "square"])
    photos = shapes(tmp_path / "photos", 3)
    expected = ready_copy(checkpoint, tmp_path / "cache").predict_paths(photos, workers=0)
    assert cache_size(tmp_path / "cache")["onnx"]["files"] == 2  # model.onnx and answers.json
    set_cache_limit(tmp_path / "cache", 1)  # a byte: everything goes
    assert cache_size(tmp_path / "cache")["onnx"]["files"] == 0
    assert ready_copy(checkpoint, tmp_path / "cache").predict_paths(photos, workers=0) == expected  # written again
