"""The `train` command: one flag per TrainConfig field, the config they make, and the run."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..config import TrainConfig
from ..engine.choice import BACKENDS


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; an unset flag keeps the config's default (or the model's recipe)."""
    d = TrainConfig()
    p.add_argument("--dataset", choices=("sample", "oxford-iiit-pet", "folder"),
                   help=f"bundled sample photos, Oxford-IIIT Pet, or your own class folders (default {d.dataset})")
    p.add_argument("--data-dir", help="dataset root (Oxford: the folder holding oxford-iiit-pet/)")
    p.add_argument("--download", action="store_true", default=None, help="download Oxford-IIIT Pet if missing")
    p.add_argument("--task", choices=("breed", "species"),
                   help="Oxford-IIIT Pet: 37 breeds or cat/dog (default breed); a folder's classes are its sub-folders")
    p.add_argument("--val-fraction", type=float, help=f"share of training photos held out (default {d.val_fraction})")
    p.add_argument("--strict-images", action="store_true", default=None,
                   help="stop at an unreadable photo instead of skipping it with a warning")
    p.add_argument("--cache-dir", help="where decoded photos are cached (default ~/.cache/petclassifier)")
    p.add_argument("--model", help="efficientnet_lite0/1/2, smallcnn or a torchvision classifier such as resnet50 or "
                   f"convnext_tiny (not vit_*, maxvit_t) (default {d.model})")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, help="start from ImageNet weights")
    p.add_argument("--trainable-stages", type=int, help="last body stages fine-tuned; 0 head only, -1 all")
    p.add_argument("--image-size", type=int,
                   help="side of the square the network sees (default: recipe; torchvision: its weights' crop)")
    p.add_argument("--epochs", type=int,
                   help="passes over the training photos (default: recipe, raised to 200 steps for few photos)")
    p.add_argument("--batch-size", type=int, help="photos per step, over all processes under torchrun "
                   "(default: recipe, from the number of photos)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: recipe)")
    p.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {d.weight_decay})")
    p.add_argument("--warmup-epochs", type=float, help=f"linear warm-up length (default {d.warmup_epochs})")
    p.add_argument("--label-smoothing", type=float,
                   help="share of each target spread over the other classes (default: recipe)")
    p.add_argument("--balance", action="store_true", default=None,
                   help="weight the loss by inverse class frequency (for unbalanced classes)")
    p.add_argument("--augment-views", type=int,
                   help="augmented views per photo the frozen body computes once, head-only training (default: recipe)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction,
                   help="head-only models: train the head again on train + val photos at the end (default on)")
    p.add_argument("--flip-tta", action=argparse.BooleanOptionalAction,
                   help="score each photo and its mirror image, averaged (default: on for efficientnet_lite1/2)")
    p.add_argument("--kinds", action=argparse.BooleanOptionalAction,
                   help="the head also reads the kind of animal ImageNet's classifier sees: cat, dog, ..., no animal "
                   "(default: on when only a pretrained model's head learns)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help=f"where to train: auto picks CUDA when present, else the CPU (default {d.device})")
    p.add_argument("--backend", choices=BACKENDS,
                   help="what runs the frozen pass: onnxruntime(-int8) run on a CPU and need the onnx extra; auto: "
                   f"onnxruntime on a CPU where installed, else torch (default {d.backend})")
    p.add_argument("--workers", type=int, help=f"image-decoding processes (default {d.workers})")
    p.add_argument("--seed", type=int,
                   help=f"seeds the split, initial weights, augmentation and batch order (default {d.seed})")
    p.add_argument("--out", help="run folder (default runs/<date-time>-<model>-<task>)")
    p.add_argument("--resume", help="continue from a last.pt, exactly where it stopped (default run folder: its own)")
    p.add_argument("--save-every", type=int,
                   help="also save last.pt every N steps (default: at an epoch's end 30 s after the last save, and at "
                   "the last epoch's)")
    p.add_argument("--curves", action=argparse.BooleanOptionalAction,
                   help="draw loss and accuracy per epoch into the run folder's curves.png (default on)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the trained layers")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic algorithms only, for bit-identical reruns and resumes (slower on GPUs)")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """The config the flags make, and the fields they set (a flag given at its default value counts)."""
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return TrainConfig(**given), set(given)


def run_train(args: argparse.Namespace) -> int:
    from ..training.run import fit

    cfg, given = config_from_args(args)
    fit(cfg, given)
    return 0
