"""The frozen pass on ONNX Runtime (float32 and int8) computes what PyTorch computes; a run records its backend."""

import pytest
import torch
import torch.nn.functional as F

from petclassifier import PetClassifier, backends, train
from petclassifier.backends import on_backend, resolve_backend
from petclassifier.checkpoint import load_checkpoint
from petclassifier.errors import UserError
from petclassifier.frozen import fast_frozen
from petclassifier.images import load_image
from petclassifier.models import build_model
from petclassifier.transforms import Preprocessing

from .conftest import SAMPLE
from .test_train import TINY

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
INT8_COSINE = 0.98  # the stated tolerance: each photo's int8 features point the way float32's do, to this cosine


def photo_batch(paths, prep) -> torch.Tensor:
    return prep.eval_batch(torch.stack([prep.square(load_image(p, min_size=prep.resize)) for p in paths]))


def test_onnxruntime_computes_the_features_pytorch_computes_in_float32_and_near_them_in_int8(tmp_path):
    model = build_model("efficientnet_lite0", 2, pretrained=True, imagenet_stages=0).eval()
    frozen, _ = model.split(0)
    body = fast_frozen(frozen, model.head[0])
    prep = Preprocessing.for_model("efficientnet_lite0", 96)
    photos = sorted((SAMPLE / "oxford-iiit-pet" / "images").glob("*.jpg"))
    calibration = photo_batch(photos[::23][:16], prep)  # real photos: int8's ranges are set on what users send
    x = photo_batch(photos[5::37][:8], prep)
    with torch.no_grad():
        expected = body(x).flatten(1)
    fp32 = on_backend(body, "onnxruntime", prep.crop, tmp_path, None)
    assert (fp32(x).flatten(1) - expected).abs().max().item() < 1e-4
    int8 = on_backend(body, "onnxruntime-int8", prep.crop, tmp_path, lambda: iter(calibration.split(8)))
    got = int8(x).flatten(1)
    assert got.shape == expected.shape and torch.isfinite(got).all()
    assert F.cosine_similarity(got, expected).min().item() > INT8_COSINE
    assert "onnxruntime-int8 of" in str(int8) and str(int8) != str(fp32)  # cached features are keyed apart
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2  # exported once; the int8 copy beside it
    on_backend(body, "onnxruntime-int8", prep.crop, tmp_path, lambda: iter(calibration.split(8)))
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2  # found again, not exported again


def test_a_run_on_int8_records_its_backend_and_its_model_scores_on_pytorch(shapes_dir, cache_dir, tmp_path):
    cfg = {**TINY, "model": "efficientnet_lite0", "pretrained": True, "trainable_stages": 0, "image_size": 48,
           "epochs": 2, "data_dir": str(shapes_dir), "cache_dir": cache_dir}
    summary = train(**cfg, backend="onnxruntime-int8", out=str(tmp_path / "int8"))
    ckpt = load_checkpoint(tmp_path / "int8" / "best.pt")
    assert ckpt["backend"] == "onnxruntime-int8" and ckpt["config"]["backend"] == "onnxruntime-int8"
    assert summary["best_val_accuracy"] > 0.5
    classifier = PetClassifier.from_checkpoint(tmp_path / "int8", device="cpu")  # predict runs PyTorch
    probabilities = classifier.probabilities([load_image(p) for p in sorted(shapes_dir.rglob("*.png"))[:4]])
    assert probabilities.shape == (4, 2) and torch.allclose(probabilities.sum(1), torch.ones(4))
    auto = train(**cfg, out=str(tmp_path / "auto"))  # auto is PyTorch in these tests (conftest)
    assert load_checkpoint(tmp_path / "auto" / "best.pt")["backend"] == "torch" and auto["best_val_accuracy"] > 0.5


def test_the_backend_is_resolved_or_refused_in_one_line(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(backends, "AUTO_ON_CPU", "onnxruntime-int8")  # where int8 is the choice
    assert resolve_backend("auto", cpu) == "onnxruntime-int8" and resolve_backend("auto", cuda) == "torch"
    assert resolve_backend("onnxruntime", cpu) == "onnxruntime"
    with pytest.raises(UserError, match="runs on the CPU; on a GPU use --backend torch"):
        resolve_backend("onnxruntime", cuda)
    with pytest.raises(UserError, match="unknown backend 'tensorrt'"):
        resolve_backend("tensorrt", cpu)
    monkeypatch.setattr(backends, "onnx_available", lambda: False)
    assert resolve_backend("auto", cpu) == "torch"
    with pytest.raises(UserError, match=r'needs ONNX Runtime: pip install -e "\.\[onnx\]"'):
        resolve_backend("onnxruntime-int8", cpu)
