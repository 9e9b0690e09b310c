"""Kinds of animal the pretrained ImageNet classifier tells apart: its 1,000 classes grouped into cat, dog, hamster,
..., "other animal" and "no animal", and those groups as extra inputs of a new head."""

from __future__ import annotations

import torch
from torch import nn


def classes(*spans: tuple[int, int]) -> list[int]:
    """ImageNet class indices (torchvision's numbering), each span first to last inclusive."""
    return [i for first, last in spans for i in range(first, last + 1)]


# The ImageNet classes a photo of each kind of pet is called. Chosen by reading ImageNet's class list: a kind takes
# every class of that animal (the 118 dog breeds; all birds; all turtles, lizards, snakes and frogs), and the classes
# a pet of that kind is mistaken for (a pet ferret is called polecat, mink or weasel). Wild relatives (wolves,
# foxes, big cats, crocodiles, salamanders) are "other animal". ImageNet lists its animals first (0-397).
KINDS: dict[str, list[int]] = {
    "cat": classes((281, 285)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "dog": classes((151, 268)),
    "rabbit": classes((330, 332)),  # wood rabbit, hare, Angora
    "hamster": [333],
    "guinea pig": [338],
    "ferret": classes((356, 359)),  # weasel, mink, polecat, black-footed ferret
    "bird": classes((7, 24), (80, 100), (127, 146)),
    "fish": classes((0, 6), (389, 397)),  # goldfish among them
    "turtle": classes((33, 37)),
    "lizard": classes((38, 48)),
    "snake": classes((52, 68)),
    "frog": classes((30, 32)),
    "horse": [339],  # sorrel, ImageNet's one horse
}
ANIMALS = 398
KIND_NAMES = [*KINDS, "other animal", "no animal"]
# As head inputs: log-probabilities floored at 1e-3 (rarer than that is "not this kind", however rare), times 10, so
# that a head starting at zero learns to lean on them within its few hundred steps. Chosen on training photos only
# (k photos a class drawn from cats-vs-dogs train/, the first 100 not-pets and Oxford trainval, scored on the rest of
# them; a head on centre crops): 20 photos a class of cats, dogs and objects 95.8% without kinds, 97.0% with scale 1,
# 97.8% with 3, 98.8% with 6, 99.0% with 10 (a linear probe to convergence: 99.0%); 5 a class 93.4% without, 98.4%
# with 10; Oxford breeds within 0.4 points either way.
FLOOR, SCALE = 1e-3, 10.0


def kind_index() -> list[int]:
    """The index in KIND_NAMES of each of the 1,000 ImageNet classes, as plain numbers."""
    kind = [len(KINDS)] * ANIMALS + [len(KINDS) + 1] * (1000 - ANIMALS)  # other animal, then no animal
    for k, ids in enumerate(KINDS.values()):
        for i in ids:
            kind[i] = k
    return kind


# Kept as numbers, not as a tensor: a tensor made once could be made while a model is being exported (traced), and
# every later call would then compute with the tracer's stand-in
KIND_INDEX = kind_index()


def kind_of_class() -> torch.Tensor:
    """[1000]: the index in KIND_NAMES of each ImageNet class."""
    return torch.tensor(KIND_INDEX)


def kind_probabilities(imagenet_logits: torch.Tensor) -> torch.Tensor:
    """[B, 1000] ImageNet class scores -> [B, 15] the probability of each kind (the sum over its classes)."""
    # a product with a fixed [1000, 15] membership matrix: no shape of the batch in it, so traced exports keep it
    return imagenet_logits.float().softmax(dim=1) @ membership(imagenet_logits.device)


def membership(device: torch.device) -> torch.Tensor:
    """[1000, 15]: 1 where an ImageNet class belongs to a kind."""
    return nn.functional.one_hot(kind_of_class(), len(KIND_NAMES)).to(device, torch.float32)


class KindFeatures(nn.Module):
    """[B, D] pooled features -> [B, D + 15]: the features (through dropout), and what kind of animal ImageNet's
    classifier sees in them. A head on pooled features learns a class such as "dog" or "objects" from a few photos
    through these far better than through 1,280 features alone: they carry what a million ImageNet photos taught."""

    def __init__(self, classifier: nn.Linear, dropout: float):
        super().__init__()
        self.classifier = classifier.requires_grad_(False)  # the pretrained ImageNet one, frozen
        # on the features only: a dropped kind reads "certainly not this kind", a dog photo's "no animal" among them
        self.dropout = nn.Dropout(dropout)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.dropout(rows), self.kinds(rows).to(rows.dtype)], dim=1)

    def kinds(self, rows: torch.Tensor) -> torch.Tensor:
        """[B, D] pooled features -> [B, 15] the kinds as the head reads them."""
        return SCALE * kind_probabilities(self.classifier(rows)).clamp_min(FLOOR).log()


class KindInputs(nn.Module):
    """A pooled kinds head (pool, flatten, KindFeatures, linear) reading rows whose kinds were computed once per view
    (`rows`: [B, D + 15]): the same function and the same parameters, without running the ImageNet classifier at every
    step (half a step's time). Features still [B, D, 1, 1] (a view kept on disk) get their kinds on the way."""

    def __init__(self, head: nn.Sequential):
        super().__init__()
        self.features, self.linear = head[2], head[3]  # the model's own layers: training this trains its head

    @torch.no_grad()
    def rows(self, features: torch.Tensor) -> torch.Tensor:
        """[N, D, 1, 1] pooled features -> [N, D + 15] the features and their kinds, in the features' dtype."""
        flat = features.flatten(1)
        return torch.cat([flat, self.features.kinds(flat.float()).to(flat.dtype)], dim=1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.dim() == 4:
            rows = self.rows(rows).to(rows.dtype)
        d = self.features.classifier.in_features
        return self.linear(torch.cat([self.features.dropout(rows[:, :d]), rows[:, d:]], dim=1))


def kind_head(head: nn.Sequential, imagenet_head: nn.Sequential, num_classes: int) -> nn.Sequential | None:
    """`head` (pool, flatten, dropout, linear) as pool, flatten, KindFeatures (with that dropout), linear; None for
    any other head (a torchvision head with hidden layers of its own reads the features differently)."""
    plain = [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear]
    if [type(m) for m in head] != plain or [type(m) for m in imagenet_head] != plain:
        return None
    kinds = KindFeatures(imagenet_head[-1], head[2].p)
    return nn.Sequential(head[0], head[1], kinds, nn.Linear(head[-1].in_features + len(KIND_NAMES), num_classes))



# A kind's probability is a sum over its ImageNet classes, and every class keeps some of the mass: "no animal" sums
# 602 classes' small shares, "dog" 118, "cat" 5, so a kitten's 38% "cat" lost to 45% "no animal". Each kind's sum is
# divided by (its number of classes, at least FEW_CLASSES) ** COUNT_PRIOR: the many-class kinds lose their tail, and
# the kinds of fewer classes than cat (hamster, horse, rabbit, ferret) are not raised above it. Chosen on training
# photos (cats-vs-dogs train/ and the first 100 not-pets, mirror-averaged): a power of 0 gave cats 54% right, 0.5
# 93%, 0.75 96%, 1 cost the objects; counting at least 5 classes, cats 96.6%, dogs 99.4%, objects 99% (at least 1:
# cats 95.9%, 3: 96.0%, 10: 95.0%).
COUNT_PRIOR, FEW_CLASSES = 0.75, 5


class KindScores(nn.Module):
    """[B, 1000] ImageNet class scores -> [B, 15] a score for each kind, whose softmax is the kinds' probabilities
    (each kind's summed probability over its number of classes, at least 5, ** COUNT_PRIOR; normalised): a network
    ending in it answers kinds as a trained model answers its classes."""

    def __init__(self):
        super().__init__()
        classes = nn.functional.one_hot(kind_of_class()).sum(0).float()
        self.register_buffer("log_classes", classes.clamp_min(FEW_CLASSES).log())

    def forward(self, imagenet_logits: torch.Tensor) -> torch.Tensor:
        return kind_probabilities(imagenet_logits).clamp_min(1e-30).log() - COUNT_PRIOR * self.log_classes
