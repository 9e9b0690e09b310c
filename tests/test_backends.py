"""The frozen pass on ONNX Runtime (float32 and int8) computes what PyTorch computes; a run records its backend."""

import pytest
import torch
import torch.nn.functional as F

from petclassifier import PetClassifier, train
from petclassifier.data.images import load_image
from petclassifier.data.transforms import Preprocessing
from petclassifier.engine import backends, choice
from petclassifier.engine.backends import on_backend, resolve_backend
from petclassifier.engine.frozen import fast_frozen
from petclassifier.errors import UserError
from petclassifier.models.checkpoint import load_checkpoint
from petclassifier.models.registry import build_model

from .conftest import SAMPLE
from .test_train import TINY

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
INT8_COSINE = 0.98  # the stated tolerance: each photo's int8 features point the way float32's do, to this cosine


def photo_batch(paths, prep) -> torch.Tensor:
    return prep.eval_batch(torch.stack([prep.square(load_image(p, min_size=prep.resize)) for p in paths]))


def lite0_body_and_photos(size: int = 96):
    """Lite0's folded frozen stages, 16 real photos to calibrate int8 on and 8 others."""
    model = build_model("efficientnet_lite0", 2, pretrained=True, imagenet_stages=0).eval()
    frozen, _ = model.split(0)
    prep = Preprocessing.for_model("efficientnet_lite0", size)
    photos = sorted((SAMPLE / "oxford-iiit-pet" / "images").glob("*.jpg"))
    calibration = photo_batch(photos[::23][:16], prep)  # real photos: int8's ranges are set on what users send
    return fast_frozen(frozen, model.head[0]), prep, calibration, photo_batch(photos[5::37][:8], prep)


def test_onnxruntime_computes_the_features_pytorch_computes_in_float32_and_near_them_in_int8(tmp_path, capsys):
    """On any x86 CPU, with VNNI or without (where 7-bit weights avoid int16 saturation): int8's features follow
    float32's to INT8_COSINE on every photo, or int8 is refused with one line and float32 runs."""
    body, prep, calibration, x = lite0_body_and_photos()
    with torch.no_grad():
        expected = body(x).flatten(1)
    fp32 = on_backend(body, "onnxruntime", prep.crop, tmp_path, None)
    assert (fp32(x).flatten(1) - expected).abs().max().item() < 1e-4
    int8 = on_backend(body, "onnxruntime-int8", prep.crop, tmp_path, lambda: iter(calibration.split(8)))
    got, path = int8(x).flatten(1), f"this CPU: {backends.int8_settings()}, VNNI {backends.has_vnni()}"
    assert backends.int8_settings()["reduce_range"] is not backends.has_vnni(), path
    assert got.shape == expected.shape and torch.isfinite(got).all()
    printed = capsys.readouterr().out
    if int8.backend == "onnxruntime-int8":
        assert F.cosine_similarity(got, expected).min().item() > INT8_COSINE, path
        assert "onnxruntime-int8 of" in str(int8) and str(int8) != str(fp32)  # cached features are keyed apart
        assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2  # exported once; the int8 copy beside it
    else:
        assert "int8 refused on this CPU" in printed and str(int8) == str(fp32), (path, printed)
    on_backend(body, "onnxruntime-int8", prep.crop, tmp_path, lambda: iter(calibration.split(8)))
    assert "quantized" not in capsys.readouterr().out  # found again with its verdict, not quantized again
    assert len(list((tmp_path / "onnx").glob("*.int8.json"))) == 1


def test_int8_that_strays_from_float32_is_refused_in_one_line_and_float32_runs(tmp_path, capsys, monkeypatch):
    body, prep, calibration, x = lite0_body_and_photos(64)
    monkeypatch.setattr(backends, "INT8_COSINE", 1.01)  # no int8 reaches it
    refused = on_backend(body, "onnxruntime-int8", prep.crop, tmp_path, lambda: iter(calibration.split(8)))
    said = [line for line in capsys.readouterr().out.splitlines() if "int8" in line]
    assert said[-1].startswith("int8 refused on this CPU: its features strayed from float32's (cosine 0.") and \
        said[-1].endswith("of 16 calibration photos, below 1.01); the frozen pass runs in float32 "
                          "(--backend onnxruntime)"), said
    fp32 = on_backend(body, "onnxruntime", prep.crop, tmp_path, None)
    assert refused.backend == "onnxruntime" and str(refused) == str(fp32)  # the same features, the same cache keys
    assert torch.equal(refused(x), fp32(x))
    on_backend(body, "onnxruntime-int8", prep.crop, tmp_path, lambda: iter(calibration.split(8)))
    again = capsys.readouterr().out
    assert "quantized" not in again and "int8 refused on this CPU" in again  # the verdict is kept, and said again
    other_cpu = not backends.has_vnni()
    monkeypatch.setattr(backends, "has_vnni", lambda: other_cpu)  # the other kind of CPU: a copy of its own
    on_backend(body, "onnxruntime-int8", prep.crop, tmp_path, lambda: iter(calibration.split(8)))
    assert "quantized" in capsys.readouterr().out and len(list((tmp_path / "onnx").glob("*.int8.json"))) == 2


def test_a_run_on_int8_records_its_backend_and_its_model_scores_on_pytorch(shapes_dir, cache_dir, tmp_path,
                                                                           monkeypatch):
    cfg = {**TINY, "model": "efficientnet_lite0", "pretrained": True, "trainable_stages": 0, "image_size": 48,
           "epochs": 2, "data_dir": str(shapes_dir), "cache_dir": cache_dir}
    monkeypatch.setattr(backends, "INT8_COSINE", 1.01)  # refused: the run records the float32 that ran
    train(**cfg, backend="onnxruntime-int8", out=str(tmp_path / "refused"))
    ckpt = load_checkpoint(tmp_path / "refused" / "best.pt")
    assert ckpt["backend"] == "onnxruntime" and ckpt["config"]["backend"] == "onnxruntime"
    monkeypatch.setattr(backends, "INT8_COSINE", 0.5)  # kept, whatever these drawn shapes' features are
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
    monkeypatch.setattr(choice, "AUTO_ON_CPU", "onnxruntime-int8")  # where int8 is the choice
    assert resolve_backend("auto", cpu) == "onnxruntime-int8" and resolve_backend("auto", cuda) == "torch"
    assert resolve_backend("onnxruntime", cpu) == "onnxruntime"
    with pytest.raises(UserError, match="runs on the CPU; on a GPU use --backend torch"):
        resolve_backend("onnxruntime", cuda)
    with pytest.raises(UserError, match="unknown backend 'tensorrt'"):
        resolve_backend("tensorrt", cpu)
    monkeypatch.setattr(choice, "onnx_installed", lambda: False)
    assert resolve_backend("auto", cpu) == "torch"
    with pytest.raises(UserError, match=r'needs ONNX Runtime: pip install -e "\.\[onnx\]"'):
        resolve_backend("onnxruntime-int8", cpu)
