"""petclassifier: a PyTorch pet-photo classifier (Oxford-IIIT Pet breeds, cat or dog, or your own folders)."""

import importlib

__version__ = "0.1.0"

# The names the package hands on, and the module each lives in. They are imported when first used (PEP 562), so
# `petclassifier --help` and `import petclassifier.config` load no torch.
_EXPORTS = {"PetClassifier": "inference.predict", "PetNet": "models.net", "TrainConfig": "config",
            "build_model": "models.registry", "fit": "training.run", "train": "training.run",
            "kind_classifier": "inference.animals", "examine": "doctor.report"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
