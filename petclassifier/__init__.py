"""petclassifier: a PyTorch pet-photo classifier (Oxford-IIIT Pet breeds, cat or dog, or your own folders)."""

__version__ = "0.1.0"

from .config import TrainConfig  # noqa: E402
from .models import PetNet, build_model  # noqa: E402
from .predict import PetClassifier  # noqa: E402
from .train import fit, train  # noqa: E402

__all__ = ["PetClassifier", "PetNet", "TrainConfig", "build_model", "fit", "train", "__version__"]
