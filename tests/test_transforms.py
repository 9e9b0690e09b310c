import torch

from petclassifier.transforms import Preprocessing


def test_eval_batch_is_a_centre_crop_normalised():
    prep = Preprocessing.for_model("efficientnet_lite0", 224)
    assert prep.resize == 256
    x = torch.full((2, 3, 256, 256), 255, dtype=torch.uint8)
    x[..., 16:240, 16:240] = 0  # the centre crop sees only the black square
    out = prep.eval_batch(x)
    assert out.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out, torch.full_like(out, -1.0))  # (0 - 0.5) / 0.5


def test_train_batch_crops_every_photo_differently_and_reproducibly():
    prep = Preprocessing.for_model("smallcnn", 32)
    x = torch.randint(0, 256, (8, 3, prep.resize, prep.resize), dtype=torch.uint8)
    a = prep.train_batch(x, torch.Generator().manual_seed(0))
    b = prep.train_batch(x, torch.Generator().manual_seed(0))
    c = prep.train_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1.0 - 1e-5 and a.max() <= 1.0 + 1e-5
