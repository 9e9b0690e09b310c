"""The kind of animal in any photo, with no checkpoint and no training: the pretrained network's own ImageNet
classifier, its 1,000 classes summed into cat, dog, rabbit, hamster, ..., "other animal" and "no animal"
(petclassifier.models.kinds). `petclassifier kind PHOTO...`, or in Python:

    from petclassifier.inference.animals import kind_classifier, kind_answer
    kind_answer(kind_classifier().predict("photo.jpg", top_k=3))  # {"kind": "hamster", "probability": 0.93, ...}
"""

from __future__ import annotations

from torch import nn

from ..data.transforms import Preprocessing
from ..models.kinds import KIND_NAMES, KindScores
from ..models.registry import LITE_SIZES, registry_model
from .answers import Prediction
from .predict import PetClassifier

TOP_KINDS = 3  # kinds each answer lists


def kind_classifier(model_name: str = "efficientnet_lite2", device: str = "auto") -> PetClassifier:
    """A PetClassifier whose classes are the kinds of animal: the pretrained network ending in its ImageNet
    classifier and KindScores, each photo scored with its mirror image (chosen on cats-vs-dogs train/: cats 95.9%
    right against 94.7% on the centre crop alone, measured before KindScores' floor of 5 classes)."""
    if model_name not in LITE_SIZES:
        raise ValueError(f"kinds come from an EfficientNet-Lite's ImageNet classifier: {', '.join(LITE_SIZES)}")
    model = registry_model(model_name, 1000, pretrained=True)  # 1000 classes: its ImageNet head is kept
    model.head = nn.Sequential(*model.head, KindScores())
    prep = Preprocessing.for_model(model_name, LITE_SIZES[model_name])
    return PetClassifier(model, KIND_NAMES, prep, None, device, flip_tta=True)


def kind_answer(prediction: Prediction | list[tuple[str, float]], path: str | None = None) -> dict:
    """A photo's kind as JSON: {"path", "kind", "probability", "kinds": [the top 3 with their probabilities]}, or
    {"path", "error"}."""
    if isinstance(prediction, Prediction):
        if prediction.error is not None:
            return {"path": prediction.path, "error": prediction.error}
        path, prediction = prediction.path, prediction.labels
    (kind, probability), top = prediction[0], prediction[:TOP_KINDS]
    return {"path": path, "kind": kind, "probability": probability,
            "kinds": [{"kind": name, "probability": p} for name, p in top]}


def kind_text(answer: dict) -> str:
    """One line: 'photo.jpg: hamster 93.1% (guinea pig 4.0%, rabbit 1.2%)', or the error."""
    if "error" in answer:
        return f"{answer['path']}: error: {answer['error']}"
    others = ", ".join(f"{k['kind']} {k['probability']:.1%}" for k in answer["kinds"][1:])
    return f"{answer['path']}: {answer['kind']} {answer['probability']:.1%} ({others})"
