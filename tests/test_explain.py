import pytest
import torch
from torch import nn

from petclassifier import PetClassifier
from petclassifier.cli import main
from petclassifier.data.images import load_image
from petclassifier.data.transforms import Preprocessing
from petclassifier.insight import plots
from petclassifier.insight.explain import GradCAM, explain_photos, upsample
from petclassifier.models.checkpoint import load_checkpoint, save_checkpoint
from petclassifier.models.net import PetNet
from petclassifier.models.registry import build_model

from .conftest import SAMPLE
from .test_evaluate import PNG, trained  # noqa: F401  (module fixture: a tiny trained checkpoint)


def test_gradcam_points_at_the_evidence_for_the_class():
    # body: one 1x1 conv copying the input's first channel; head: class 0 likes it, class 1 dislikes it
    conv = nn.Conv2d(3, 1, 1, bias=False)
    model = PetNet([conv], num_features=1, num_classes=2, dropout=0.0)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        model.head[-1].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model.head[-1].bias.zero_()
    x = torch.zeros(1, 3, 6, 6)
    x[0, 0, 2, 3] = 1.0
    cams, logits = GradCAM(model)(x)
    assert logits.argmax().item() == 0 and cams.shape == (1, 6, 6)
    assert cams[0, 2, 3] == 1.0 and cams.sum() == 1.0  # all the evidence sits on the bright pixel
    against, _ = GradCAM(model)(x, torch.tensor([1]))
    assert against.abs().sum() == 0  # nothing in the photo speaks for class 1


def test_hottest_cell_inside_or_on_the_border():
    cams = torch.zeros(3, 10, 10)
    cams[0, 5, 4] = 1  # centre
    cams[1, 0, 4] = 1  # top border
    cams[2, 1, 1] = 1  # off the ring, but its centre (15% across) is outside the central 60% box
    inside = hottest_inside(cams)
    assert inside["off_ring"].tolist() == [True, False, True]
    assert inside["central_box"].tolist() == [True, False, False]


# Oxford-IIIT Pet breeds that are ImageNet classes too, with that class's index
IMAGENET_CLASS = {"Persian": 283, "Siamese": 284, "Egyptian_Mau": 285, "pug": 254, "beagle": 162, "basset_hound": 161,
                  "boxer": 242, "chihuahua": 151, "japanese_chin": 152, "pomeranian": 259, "samoyed": 258,
                  "newfoundland": 256, "saint_bernard": 247, "yorkshire_terrier": 187, "keeshond": 261}


def hottest_inside(cams: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per cam [B, h, w]: is the hottest grid cell off the outer ring, is the hottest pixel in the central 60% box."""
    b, h, w = cams.shape
    cell = cams.flatten(1).argmax(1)
    row, col = cell // w, cell % w
    off_ring = (row > 0) & (row < h - 1) & (col > 0) & (col < w - 1)
    fine = upsample(cams, 100)  # 100 pixels: the central 60% box is pixels 20..79
    pixel = fine.flatten(1).argmax(1)
    prow, pcol = pixel // 100, pixel % 100
    central = (prow >= 20) & (prow < 80) & (pcol >= 20) & (pcol < 80)
    return {"off_ring": off_ring, "central_box": central}


def centre_share(model: PetNet, images: torch.Tensor, labels: torch.Tensor, prep, batch_size: int = 32) -> dict:
    """Over the correctly classified photos: the share whose Grad-CAM peak is off the border (both definitions)."""
    cam = GradCAM(model)
    correct, off_ring, central = 0, 0, 0
    for i in range(0, len(images), batch_size):
        x = prep.eval_batch(images[i : i + batch_size])
        cams, logits = cam(x)
        right = logits.argmax(1) == labels[i : i + batch_size]
        inside = hottest_inside(cams[right])
        correct += int(right.sum())
        off_ring += int(inside["off_ring"].sum())
        central += int(inside["central_box"].sum())
    return {"correct_photos": correct, "photos": len(images), "off_ring_share": off_ring / max(1, correct),
            "central_box_share": central / max(1, correct)}


def test_gradcam_on_real_pet_photos_looks_at_the_pet():
    """ImageNet knows many cat and dog breeds: where it recognises the breed, the evidence lies in the middle."""
    model = build_model("efficientnet_lite0", 1000, pretrained=True).eval()
    prep = Preprocessing.for_model("efficientnet_lite0", 224)
    paths = [p for p in sorted((SAMPLE / "oxford-iiit-pet" / "images").glob("*.jpg"))
             if p.stem.rsplit("_", 1)[0] in IMAGENET_CLASS][::11][:12]
    labels = torch.tensor([IMAGENET_CLASS[p.stem.rsplit("_", 1)[0]] for p in paths])
    images = torch.stack([prep.square(load_image(p, min_size=prep.resize)) for p in paths])
    share = centre_share(model, images, labels, prep)
    assert share["photos"] == 12 and share["correct_photos"] >= 9, share  # the breed itself, not any class
    assert share["off_ring_share"] >= 0.75, share


def test_explain_command_writes_the_pictures(trained, tmp_path, capsys):  # noqa: F811
    data, run = trained
    photos = sorted((data / "test" / "disc").glob("*.png"))[:2]
    out = tmp_path / "explain"
    code = main(["explain", "--checkpoint", str(run / "best.pt"), "--out", str(out), "--class", "square",
                 *map(str, photos)])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"filters.png", *(f"{p.stem}_gradcam.png" for p in photos),
                     *(f"{p.stem}_features.png" for p in photos)}
    assert all(p.read_bytes()[:8] == PNG for p in out.iterdir())
    assert main(["explain", "--checkpoint", str(run / "best.pt"), "--out", str(out), "--class", "hamster",
                 str(photos[0])]) == 2
    assert "unknown class 'hamster'" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    assert main(["explain", "--checkpoint", str(run / "best.pt"), "--out", str(out), str(broken)]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot explain {broken}: not an image")


def test_explain_captions_give_the_calibrated_probabilities(trained, tmp_path, monkeypatch):  # noqa: F811
    data, run = trained
    photo = sorted((data / "test" / "disc").glob("*.png"))[0]
    captions = []
    monkeypatch.setattr(plots, "plot_gradcam", lambda image, panels, *_: captions.append([c for c, _ in panels]))
    for t in (1.0, 5.0):
        save_checkpoint({**load_checkpoint(run / "best.pt"), "temperature": t}, tmp_path / f"t{t}.pt")
        classifier = PetClassifier.from_checkpoint(tmp_path / f"t{t}.pt", device="cpu")
        ((label, p),) = classifier.predict(photo, top_k=1)
        square = dict(classifier.predict(photo, top_k=2))["square"]
        explain_photos(classifier, [photo], tmp_path / "explain", classes=["square"])
        assert captions[-1] == [f"predicted: {label} {p:.0%}", f"evidence for square ({square:.0%})"]
    assert captions[0] != captions[1]  # the probabilities differ with the temperature


def test_explain_shows_the_probabilities_predict_reports_and_explains_that_class(trained, tmp_path,  # noqa: F811
                                                                                  monkeypatch):
    """Captions come from the classifier's own scoring (temperature, flip test-time augmentation), and the Grad-CAM
    map is drawn for the class it predicts, not the plain network's argmax."""
    data, run = trained
    photo = sorted((data / "test" / "disc").glob("*.png"))[0]
    classifier = PetClassifier.from_checkpoint(run, device="cpu")
    assert classifier.predict(photo, top_k=1)[0][0] == "disc"
    monkeypatch.setattr(classifier, "probabilities", lambda images: torch.tensor([[0.3, 0.7]]))  # disc, square
    captions = []
    monkeypatch.setattr(plots, "plot_gradcam", lambda image, panels, *_: captions.append([c for c, _ in panels]))
    explain_photos(classifier, [photo], tmp_path / "explain")
    assert captions == [["predicted: square 70%"]]


def test_feature_maps_come_from_early_middle_and_late_stages(trained):  # noqa: F811
    from petclassifier.insight.explain import stage_maps

    _, run = trained
    model = PetClassifier.from_checkpoint(run / "best.pt", device="cpu").model
    maps = stage_maps(model, torch.rand(1, 3, 32, 32), per_stage=3)
    assert [m.shape[0] for _, m in maps] == [3, 3, 3]
    assert [caption.split(":")[0] for caption, _ in maps] == ["early", "middle", "late"]
    assert maps[0][1].shape[-1] > maps[-1][1].shape[-1]  # later stages see coarser, larger parts
    assert all(0 <= m.min() and m.max() <= 1 for _, m in maps)


@pytest.mark.parametrize("size", [48])
def test_first_conv_filters_have_the_stem_shape(size):
    from petclassifier.insight.explain import first_conv

    assert first_conv(build_model("smallcnn", 2)).weight.shape == (16, 3, 3, 3)


def test_photos_with_the_same_name_in_two_folders_each_get_their_own_pictures(trained, tmp_path, capsys):  # noqa: F811
    """IMG_0001.jpg from two cameras' folders: neither photo's pictures overwrite the other's."""
    data, run = trained
    photos = [tmp_path / "phone" / "IMG_0001.png", tmp_path / "camera" / "IMG_0001.png", tmp_path / "IMG_0002.png"]
    sources = [*sorted((data / "test" / "disc").glob("*.png"))[:2], sorted((data / "test" / "square").glob("*.png"))[0]]
    for photo, source in zip(photos, sources):
        photo.parent.mkdir(parents=True, exist_ok=True)
        photo.write_bytes(source.read_bytes())
    out = tmp_path / "explain"
    assert main(["explain", "--checkpoint", str(run / "best.pt"), "--out", str(out), *map(str, photos)]) == 0
    written = [line.removeprefix("wrote ") for line in capsys.readouterr().out.splitlines()]
    assert len(written) == len(set(written)) == 1 + 2 * len(photos)  # filters.png, then two pictures per photo
    assert {p.name for p in out.iterdir()} == {
        "filters.png", "phone_IMG_0001_gradcam.png", "phone_IMG_0001_features.png", "camera_IMG_0001_gradcam.png",
        "camera_IMG_0001_features.png", "IMG_0002_gradcam.png", "IMG_0002_features.png"}


def test_output_names_stay_apart_however_the_photos_collide():
    from petclassifier.insight.explain import output_names

    paths = ["a/x/IMG.jpg", "b/x/IMG.jpg", "x/IMG.png", "IMG_1.jpg", "other.jpg"]
    names = output_names(paths)
    assert len(set(names)) == len(paths) and names[-1] == "other" and names[3] == "IMG_1"
    assert all("IMG" in name for name in names[:3])
