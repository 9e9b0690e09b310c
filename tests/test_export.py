"""Exported models (TorchScript, ONNX) give the PyTorch model's probabilities on real photos, without this package."""

import json

import pytest
import torch

from petclassifier import PetClassifier
from petclassifier.cli import main
from petclassifier.data.images import load_image
from petclassifier.data.transforms import Preprocessing
from petclassifier.inference.export import sidecar
from petclassifier.models.checkpoint import save_checkpoint
from petclassifier.models.registry import build_model

from .conftest import SAMPLE

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
PHOTOS = sorted((SAMPLE / "oxford-iiit-pet" / "images").glob("*.jpg"))[:6]
CLASSES = ["abyssinian", "beagle", "pug"]


def checkpoint(tmp_path, name="smallcnn", size=64, pretrained=False, **extra):
    """A checkpoint whose BatchNorm layers hold non-trivial statistics, so that folding them is put to the test."""
    torch.manual_seed(0)
    model = build_model(name, len(CLASSES), pretrained)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and not pretrained:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path / "best.pt"
    save_checkpoint({"model_name": name, "class_names": CLASSES, "preprocessing":
                     Preprocessing.for_model(name, size).as_dict(), "model_state": model.state_dict(),
                     "species_of": {"abyssinian": "cat", "beagle": "dog", "pug": "dog"}, **extra}, path)
    return path


def reference_and_inputs(ckpt_path):
    """PyTorch probabilities from PetClassifier, and the inputs the sidecar describes (resize, crop, normalise)."""
    clf = PetClassifier.from_checkpoint(ckpt_path, device="cpu")
    images = [load_image(p) for p in PHOTOS]
    prep = clf.preprocessing
    x = prep.eval_batch(torch.stack([prep.square(img) for img in images])).contiguous()
    return clf.probabilities(images), x


def check_sidecar(out, model_file):
    meta = json.loads((out / "model.json").read_text())
    assert meta["class_names"] == CLASSES and meta["model_file"] == model_file
    assert meta["output"]["softmax_included"] and meta["species_of"]["pug"] == "dog"
    assert {"input_size", "resize", "mean", "std"} <= set(meta)
    return meta


def test_torchscript_export_matches_pytorch(tmp_path):
    ckpt = checkpoint(tmp_path)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 0
    meta = check_sidecar(tmp_path / "ts", "model.pt")
    assert meta["input_size"] == 64 and meta["temperature"] == 1.0  # saved without a temperature: T = 1
    expected, x = reference_and_inputs(ckpt)
    scripted = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    assert "BatchNorm2d" not in {m.original_name for m in scripted.modules()}  # folded into the convolutions
    with torch.no_grad():
        got = scripted(x)
    assert (got - expected).abs().max().item() < 1e-4
    assert torch.allclose(got.sum(1), torch.ones(len(PHOTOS)), atol=1e-5)  # probabilities, softmax included


def test_torchscript_export_divides_by_the_checkpoints_temperature(tmp_path):
    ckpt = checkpoint(tmp_path, temperature=0.2)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ts")]) == 0
    meta = check_sidecar(tmp_path / "ts", "model.pt")
    assert meta["temperature"] == 0.2 and meta["output"]["temperature_included"]
    expected, x = reference_and_inputs(ckpt)  # softmax(logits / 0.2), as predict gives them
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "ts" / "model.pt"))(x)
        uncalibrated = PetClassifier.from_checkpoint(ckpt, device="cpu").model(x).softmax(1)
    assert (got - expected).abs().max().item() < 1e-4
    assert (got - uncalibrated).abs().max().item() > 1e-2


def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    ckpt = checkpoint(tmp_path)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    check_sidecar(tmp_path / "onnx", "model.onnx")
    expected, x = reference_and_inputs(ckpt)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], {"image": x.numpy()})  # a batch of 6, though exported with 2
    assert abs(got - expected.numpy()).max() < 1e-4


def test_pretrained_efficientnet_lite0_torchscript_export(tmp_path):
    ckpt = checkpoint(tmp_path, "efficientnet_lite0", size=64, pretrained=True)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ts")]) == 0
    expected, x = reference_and_inputs(ckpt)
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "ts" / "model.pt"))(x)
    assert (got - expected).abs().max().item() < 1e-4


def test_sidecar_names_the_resize_interpolation():
    ckpt = {"model_name": "resnet50", "class_names": CLASSES, "preprocessing":
            Preprocessing.for_model("resnet50", 224).as_dict()}
    meta = sidecar(ckpt, "onnx")
    assert meta["interpolation"] == "bilinear" and meta["resize"] == 232 and "(bilinear)" in meta["preprocessing"]
    old = {**ckpt, "preprocessing": {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3}}
    assert sidecar(old, "onnx")["interpolation"] == "bicubic"  # written before the field: bicubic then


def test_an_export_given_as_a_checkpoint_is_named_as_one_in_one_line(tmp_path, capsys):
    """predict (evaluate, explain, serve) take a checkpoint: an exported model.pt, or its folder, says what it is
    rather than torch's advice about weights_only."""
    photo = str(PHOTOS[0])
    assert main(["export", "--checkpoint", str(checkpoint(tmp_path)), "--out", str(tmp_path / "ts")]) == 0
    capsys.readouterr()
    for given in (tmp_path / "ts" / "model.pt", tmp_path / "ts"):
        assert main(["predict", "--checkpoint", str(given), photo]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "weights_only" not in err, err
        assert f"{tmp_path / 'ts' / 'model.pt'} is an exported TorchScript model, not a checkpoint" in err
        assert "best.pt" in err and "torch.jit.load" in err
    # TorchScript's own layout tells, without the sidecar too
    (tmp_path / "ts" / "model.json").unlink()
    assert main(["predict", "--checkpoint", str(tmp_path / "ts" / "model.pt"), photo]) == 2
    assert "is an exported TorchScript model" in capsys.readouterr().err
    # an ONNX export is no zip file: its sidecar names it
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"\x08\x09\x12\x07pytorch")
    (onnx / "model.json").write_text(json.dumps({"format": "onnx", "model_file": "model.onnx"}))
    assert main(["predict", "--checkpoint", str(onnx / "model.onnx"), photo]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{onnx / 'model.onnx'} is an exported ONNX model, not a checkpoint" in err
