"""Self-describing checkpoints: written atomically, loaded only as plain tensors and values (never code).

PyTorch and the models are imported where a checkpoint is read or written: finding one and describing it do not
load them (answers from a checkpoint's ONNX copy run without PyTorch).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from ..data.transforms import Preprocessing
    from .net import PetNet

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_name", "class_names", "preprocessing", "model_state")
ZIP_MAGIC = b"PK\x03\x04"
EXPORTS = {"torchscript": ("TorchScript", "torch.jit.load"), "onnx": ("ONNX", "onnxruntime")}  # name, loader


def library_versions() -> dict[str, str]:
    import timm
    import torch
    import torchvision

    from .. import __version__

    return {"petclassifier": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "timm": timm.__version__}


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename: a crash leaves the old file whole."""
    import torch

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, "versions": library_versions(), **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def checkpoint_file(path: str | Path, names: tuple[str, ...] = ("best.pt", "last.pt")) -> Path:
    """The checkpoint a user means: a file as given, or a run folder's first of `names` (best.pt, else last.pt)."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = [path / name for name in names if (path / name).is_file()]
    if not found:
        refuse_export(path / str(sidecar_of(path / "model.json").get("model_file", "model.pt")))
        raise UserError(f"no checkpoint file in {path} (no {' or '.join(names)})")
    return found[0]


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint as a dict; refuses anything that would need to run code to unpickle."""
    path = checked_file(path)
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        refused = f"{path} is refused: it holds objects that are not plain tensors or values ({reason})"
        raise UserError(refused) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} is not a petclassifier checkpoint (a PyTorch file without its fields)")
    if missing := [k for k in REQUIRED_KEYS if k not in ckpt]:
        raise UserError(f"{path} is not a petclassifier checkpoint (no {', '.join(missing)})")
    return ckpt


def checked_file(path: str | Path) -> Path:
    """The path, where it names a file that may be a checkpoint (a PyTorch zip archive, not an export); else
    UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint file {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    refuse_export(path, head)
    if head != ZIP_MAGIC:  # torch.save writes zip archives; anything else would reach the pickle loader
        raise UserError(f"{path} is not a petclassifier checkpoint ({'not a PyTorch file' if head else 'empty file'})")
    return path


def refuse_export(path: Path, head: bytes = ZIP_MAGIC) -> None:
    """UserError when `path` is a model `petclassifier export` wrote (torch.load would advise on weights_only)."""
    # its sidecar names it; without one, TorchScript's own layout (code and constants beside the weights) does
    if not path.is_file():
        return
    meta = sidecar_of(path.with_name("model.json"))
    fmt = meta.get("format") if meta.get("model_file") == path.name else None
    if fmt not in EXPORTS and head == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as archive:
                fmt = "torchscript" if any(n.endswith("/constants.pkl") for n in archive.namelist()) else None
        except (OSError, zipfile.BadZipFile):
            return  # torch.load then says what is wrong with it
    if fmt in EXPORTS:
        name, loader = EXPORTS[fmt]
        raise UserError(f"{path} is an exported {name} model, not a checkpoint; give a best.pt or a run folder "
                        f"(load the export with {loader})")


def sidecar_of(path: Path) -> dict:
    """The model.json an export wrote beside its model file; {} where there is none (or it is not one)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def describe(ckpt: dict) -> str:
    """What a checkpoint tells apart: 'species: cat, dog' or 'breed: 37 classes: abyssinian, american_bulldog, ...'."""
    names, kind = ckpt["class_names"], task_of(ckpt)
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{kind}: {len(names)} classes: {shown}" if len(names) > 3 else f"{kind}: {shown}"


def task_of(ckpt: dict) -> str:
    """breed, species, or folder (a model of a user's own class folders: only Oxford runs know species)."""
    return ckpt.get("task", "breed") if ckpt.get("species_of") else "folder"


def temperature_of(ckpt: dict) -> float:
    """The calibration temperature T (probabilities are softmax(logits / T)); 1 for checkpoints saved without one."""
    return float(ckpt.get("temperature", 1.0))


def flip_tta_of(ckpt: dict) -> bool:
    """Whether the model's scores are averaged with the mirror image's, as its recipe said (False before TTA)."""
    return bool(ckpt.get("flip_tta", False))


def model_from_checkpoint(ckpt: dict) -> tuple[PetNet, Preprocessing]:
    """Rebuild the network from the checkpoint alone (no weights download) and load its weights strictly."""
    from ..data.transforms import Preprocessing
    from .registry import build_model

    model = build_model(ckpt["model_name"], len(ckpt["class_names"]), False, ckpt.get("imagenet_stages"),
                        ckpt.get("kinds", False))
    try:
        model.load_state_dict(ckpt["model_state"], strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit {ckpt['model_name']}: {str(e).splitlines()[0]}") from None
    return model.eval(), Preprocessing.from_dict(ckpt["preprocessing"])


def check_class_names(ckpt: dict, class_names: list[str], source: str) -> None:
    """UserError unless the checkpoint was trained on exactly these classes, in this order (`source` names them)."""
    trained = list(ckpt["class_names"])
    if trained == list(class_names):
        return
    unknown, unseen = sorted(set(class_names) - set(trained)), sorted(set(trained) - set(class_names))
    if unknown or unseen:
        detail = "; ".join(part for part in (
            f"{len(unknown)} class(es) it never learned ({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''})"
            if unknown else "",
            f"{len(unseen)} it learned are missing ({', '.join(unseen[:3])}{', ...' if len(unseen) > 3 else ''})"
            if unseen else "") if part)
    else:
        detail = "the same classes in another order"
    raise UserError(f"the checkpoint was trained on other classes than {source}: {detail}; use a checkpoint "
                    "trained on this dataset (and --task)")


def newest_checkpoint(runs_dir: str | Path = "runs") -> Path:
    found = sorted(Path(runs_dir).glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no --checkpoint given and no {runs_dir}/*/best.pt found; train a model first")
    return found[-1]
