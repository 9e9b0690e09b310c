"""What a prediction says about one photo, and how class probabilities become it. No PyTorch here: answers from the
network and from its ONNX copy are made by the same code."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Prediction:
    """Ranked labels for one photo, with the species (cat or dog) for Oxford-IIIT Pet models."""

    path: str
    labels: list[tuple[str, float]] = field(default_factory=list)
    # reported only for a photo not flagged as no pet ("not a pet? ... [cat 55.7%]" contradicts itself): a flagged
    # one's JSON says null, so an Oxford model's entries always have the key (a folder model's never)
    species: list[tuple[str, float]] = field(default_factory=list)
    not_a_pet: bool | None = None  # None: the model has no ImageNet head to tell
    error: str | None = None

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        out = {"path": self.path, "predictions": [{"label": lab, "probability": p} for lab, p in self.labels],
               "not_a_pet": self.not_a_pet}
        if self.species:
            out["species"] = None if self.not_a_pet else [{"label": lab, "probability": p} for lab, p in self.species]
        return out

    def as_text(self) -> str:
        """One line: the labels, most likely first, and the likelier species; or the error."""
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        ranked = ", ".join(f"{label} {p:.1%}" for label, p in self.labels)
        species = f"  [{self.species[0][0]} {self.species[0][1]:.1%}]" if self.species and not self.not_a_pet else ""
        return f"{self.path}: {'not a pet? ' if self.not_a_pet else ''}{ranked}{species}"


class Labels:
    """A model's class names and each one's species: turns a photo's class probabilities into its answer."""

    def __init__(self, class_names: Sequence[str], species_of: dict[str, str] | None = None):
        self.class_names, self.species_of = list(class_names), dict(species_of or {})
        if self.species_of and set(self.class_names) <= set(self.species_of.values()):
            self.species_of = {name: name for name in self.class_names}  # a species model: each class is its species

    def ranked(self, probs: Sequence[float], top_k: int) -> list[tuple[str, float]]:
        """The `top_k` most likely labels, most likely first."""
        best = heapq.nlargest(min(top_k, len(self.class_names)), range(len(probs)), key=probs.__getitem__)
        return [(self.class_names[i], round(float(probs[i]), 6)) for i in best]

    def species(self, probs: Sequence[float]) -> list[tuple[str, float]]:
        """Cat or dog: the summed probability of each species' classes, likelier first; [] for folder models."""
        totals: dict[str, float] = {}
        for name, p in zip(self.class_names, probs) if self.species_of else ():
            totals[self.species_of[name]] = totals.get(self.species_of[name], 0.0) + float(p)
        return sorted(((k, round(v, 6)) for k, v in totals.items()), key=lambda kv: -kv[1])

    def answers(self, names: list[str], errors: list[str | None], probs, flags, top_k: int) -> list[Prediction]:
        """A batch's Predictions: each name gets its error, or the next row of `probs` (lists of floats, the readable
        photos in order) and its "not a pet" flag."""
        rows, out = zip(probs, flags), []
        for name, error in zip(names, errors):
            if error is not None:
                out.append(Prediction(name, error=error))
                continue
            p, flag = next(rows)
            out.append(Prediction(name, self.ranked(p, top_k), self.species(p), flag))
        return out
