"""Frozen features and decoded photos kept between runs: reused where nothing that determines them changed."""

import json
import shutil

import torch
from torch import nn

from petclassifier import train
from petclassifier.data import images
from petclassifier.data.cache import decode_images
from petclassifier.data.store import FeatureStore
from petclassifier.data.transforms import Preprocessing
from petclassifier.engine.frozen import Views

from .test_train import TINY

HEAD_ONLY = {**TINY, "model": "efficientnet_lite0", "pretrained": True, "trainable_stages": 0, "image_size": 48,
             "epochs": 2, "augment_views": 3}


def computed_views(monkeypatch) -> list:
    """The keys of the frozen views computed (not read from the cache) from now on."""
    computed, keep = [], FeatureStore.keep
    monkeypatch.setattr(FeatureStore, "keep", lambda self, blocks, key=None: computed.append(key) or keep(self, blocks,
                                                                                                         key))
    return computed


def metrics(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "elapsed", "time")} for r in rows]


def test_a_rerun_reads_every_frozen_view_from_the_cache_and_learns_the_same(shapes_dir, cache_dir, tmp_path,
                                                                           monkeypatch):
    computed = computed_views(monkeypatch)
    first = train(**HEAD_ONLY, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(tmp_path / "a"))
    views = len(computed)  # the train views its epochs read, val's centre and mirrored views: each under a key
    assert views >= 4 and all(computed) and len(set(computed)) == views
    computed.clear()
    again = train(**HEAD_ONLY, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(tmp_path / "b"))
    assert computed == []
    assert metrics(tmp_path / "b") == metrics(tmp_path / "a") and again["calibration"] == first["calibration"]
    train(**{**HEAD_ONLY, "lr": 1e-2, "epochs": 1, "batch_size": 4}, data_dir=str(shapes_dir), cache_dir=cache_dir,
          out=str(tmp_path / "c"))
    assert computed == []  # the learning rate, epochs and batches change what the head learns, not what it reads
    train(**{**HEAD_ONLY, "epochs": 3}, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(tmp_path / "e"))
    assert len(computed) == 2  # the third epoch's view, of the training photos and (for cross-fitting) of val's
    computed.clear()
    train(**{**HEAD_ONLY, "image_size": 64}, data_dir=str(shapes_dir), cache_dir=cache_dir, out=str(tmp_path / "d"))
    assert len(computed) == views  # another crop: every view again


def test_a_view_key_changes_with_everything_that_determines_the_view():
    prep = Preprocessing.for_model("smallcnn", 32)
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))

    def key(frozen=body, photos="p1", prep=prep, seed=0, mirror=True, device="cpu", view=2):
        views = Views(frozen, None, prep, "train", 3, mirror, seed, torch.device(device), None, photos)
        return views.key(view)

    base = key()
    changed = [key(frozen=nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))), key(photos="p2"),
               key(prep=Preprocessing.for_model("smallcnn", 40)), key(seed=1), key(view=3), key(device="meta")]
    assert key() == base and len({base, *changed}) == 1 + len(changed)
    assert key(view=0) == key(view=0, seed=5)  # the centre crop draws nothing at random
    assert key(view=1) != key(view=1, mirror=False)  # a mirrored view, or a random one


def counted_decodes(monkeypatch) -> list:
    """The photos decoded from here on (in this process: workers=0), in order."""
    decoded, square = [], images.decoded_square
    monkeypatch.setattr(images, "decoded_square", lambda source, *how: decoded.append(source) or square(source, *how))
    return decoded


def test_a_new_photo_list_decodes_only_the_photos_no_entry_holds(shapes_dir, cache_dir, monkeypatch):
    prep = Preprocessing.for_model("smallcnn", 32)
    paths = sorted(str(p) for p in shapes_dir.rglob("*.png"))
    decoded = counted_decodes(monkeypatch)
    first, _ = decode_images(paths[:-1], prep, cache_dir, workers=0)
    assert len(decoded) == len(paths) - 1
    decoded.clear()
    shuffled = paths[::-1]  # another order (another split seed) with one photo more
    again, _ = decode_images(shuffled, prep, cache_dir, workers=0)
    assert decoded == [paths[-1]]
    assert torch.equal(again.load()[1:].flip(0), first.load())
    copy = shapes_dir.parent / "copy.png"
    shutil.copy(paths[0], copy)  # a new file, with the same pixels: decoded, not taken for another photo's
    decode_images([str(copy)], prep, cache_dir, workers=0)
    assert decoded == [paths[-1], str(copy)]


def test_each_part_of_the_decoded_photo_key_decodes_again(shapes_dir, cache_dir, monkeypatch):
    """The decoder's version, Pillow's and the grey behind transparent pixels are in the key: a cache written by
    another decoder (an older version of this package) is never read as current, nor copied from."""
    import PIL

    prep = Preprocessing.for_model("smallcnn", 32)
    paths = sorted(str(p) for p in shapes_dir.rglob("*.png"))[:4]
    decoded = counted_decodes(monkeypatch)
    decode_images(paths, prep, cache_dir, workers=0)
    decode_images(paths, prep, cache_dir, workers=0)
    assert len(decoded) == 4  # once
    for module, name, value in ((images, "DECODER_VERSION", images.DECODER_VERSION + 1),
                                (PIL, "__version__", "0.0.1"), (images, "BACKGROUND", (0, 0, 0))):
        decoded.clear()
        monkeypatch.setattr(module, name, value)
        decode_images(paths, prep, cache_dir, workers=0)
        assert len(decoded) == 4, name


def test_each_part_of_the_feature_key_computes_the_view_again(shapes_dir, cache_dir, monkeypatch):
    """The package's feature format, the augmentation's constants and the backend with its library's version are in
    every view's key: change one and the view is computed again, never read from an older cache."""
    from petclassifier.data import store, transforms

    prep = Preprocessing.for_model("smallcnn", 32)
    images, _ = decode_images(sorted(str(p) for p in shapes_dir.rglob("*.png")), prep, cache_dir, workers=0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)).eval()
    computed = computed_views(monkeypatch)

    def random_view():
        with FeatureStore(shapes_dir.parent / "features") as features:
            return Views(body, images, prep, "train", 3, True, 0, torch.device("cpu"), features, "photos")[2]

    first = random_view()
    assert len(computed) == 3 and torch.equal(random_view(), first) and len(computed) == 3  # read back
    for module, name, value in ((store, "FEATURE_FORMAT", store.FEATURE_FORMAT + 1),
                                (transforms, "CROP_SCALE", (0.5, 1.0)), (transforms, "CROP_RATIO", (1.0, 1.0)),
                                (transforms, "FLIP_CHANCE", 0.0)):
        computed.clear()
        monkeypatch.setattr(module, name, value)
        random_view()
        assert len(computed) == 3, name
    assert not torch.equal(random_view(), first)  # the new constants made other crops


def test_the_onnx_runtime_version_and_int8_s_calibration_photos_are_in_the_features_key(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from petclassifier.engine import backends
    from petclassifier.engine.backends import on_backend

    body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1)).eval()
    photos = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(backends, "INT8_COSINE", -1.0)  # kept whatever: the names are what this test is about

    def name(backend, calibration=photos):
        return str(on_backend(body, backend, 32, tmp_path, lambda: iter(calibration.split(8))))

    float32, int8 = name("onnxruntime"), name("onnxruntime-int8")
    assert name("onnxruntime-int8", photos.flip(0)) != int8 != float32  # other calibration photos: another copy
    monkeypatch.setattr(backends, "onnxruntime_version", lambda: "0.0.1")
    assert name("onnxruntime") != float32 and name("onnxruntime-int8") != int8
