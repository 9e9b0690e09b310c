#!/usr/bin/env python
"""The "not a pet?" thresholds chosen on training photos, then measured on photos they were not chosen on.

    python scripts/choose_not_a_pet.py --shared ../shared/data --json docs/not-a-pet.json

A photo is flagged when the summed probability that the network's ImageNet classifier gives the pet kinds (cats and
dogs for a breed or species model, every animal for a model of your folders; `inference.predict.PET_KINDS`),
averaged over the photo and its mirror image as `predict` does, is below a threshold. The threshold is chosen on the
Oxford subset's trainval photos (pets) and the first 100 not-pets (sorted by name), by a rule fixed beforehand: the
highest candidate that flags at most 1% of those pets. It is then measured on Oxford's test list, cats-vs-dogs
`val/` and the other 99 not-pets. (The not-pets are ImageNet sample photos: the network may have seen them.)

It also measures `petclassifier kind` on the photos its settings (models/kinds.py: the class-count correction, the
mirror image) were not chosen on: cats-vs-dogs `val/` called cat or dog, the other 99 not-pets "no animal".
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from petclassifier.config import default_cache_dir
from petclassifier.data.cache import decode_images
from petclassifier.data.oxford import oxford_splits
from petclassifier.data.store import Batches
from petclassifier.data.transforms import Preprocessing
from petclassifier.inference.predict import PET_KINDS
from petclassifier.models.kinds import KIND_NAMES, kind_probabilities
from petclassifier.models.net import fold_batchnorm, mean_over_flip
from petclassifier.models.registry import build_model

MODEL, CROP = "efficientnet_lite2", 260
CANDIDATES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
MOST_PETS_FLAGGED = 0.01
CHOOSING_NOT_PETS = 100


def images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


@torch.inference_mode()
def kind_shares(paths: list[str], cache: str) -> torch.Tensor:
    """Each photo's probability of each kind of animal [N, kinds], flip averaged as `predict` scores it."""
    prep = Preprocessing.for_model(MODEL, CROP)
    model = fold_batchnorm(build_model(MODEL, 2, True, 0, kinds=True).eval())
    rows, bad = decode_images(paths, prep, cache, workers=2)
    assert not bad, bad
    batches = Batches(rows, torch.zeros(len(paths), dtype=torch.long), 32)
    return torch.cat([kind_probabilities(mean_over_flip(model.forward_with_imagenet, prep.eval_batch(x))[1])
                      for x, _ in batches])


def kind_figures(cats_and_dogs: list[str], things: list[str]) -> dict:
    """Share of photos `petclassifier kind` names rightly: cat or dog by their folder, "no animal" for things."""
    from petclassifier.inference.animals import kind_classifier

    kinds = kind_classifier(device="cpu")
    named = [p.labels[0][0] for p in kinds.iter_predictions(cats_and_dogs + things, top_k=1, workers=2)]
    truth = [Path(path).parent.name.rstrip("s") for path in cats_and_dogs] + ["no animal"] * len(things)
    right = [n == t for n, t in zip(named, truth)]
    return {"cats-vs-dogs val/ named cat or dog rightly": sum(right[: len(cats_and_dogs)]) / len(cats_and_dogs),
            "not-pets named no animal": sum(right[len(cats_and_dogs):]) / len(things),
            "photos": {"cats-vs-dogs val/": len(cats_and_dogs), "not pets": len(things)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data", help="the folder holding the photo sets")
    parser.add_argument("--json", default="docs/not-a-pet.json", help="where the figures go")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    args = parser.parse_args()
    shared = Path(args.shared)
    _, oxford, _ = oxford_splits(shared, "breed", ("trainval", "test"))
    things = images_in(shared / "not-pets")
    sets = {"choosing": {"pets": oxford["trainval"].paths, "not pets": things[:CHOOSING_NOT_PETS]},
            "measured": {"pets": oxford["test"].paths, "cats-vs-dogs val/": images_in(shared / "cats-vs-dogs" / "val"),
                         "not pets": things[CHOOSING_NOT_PETS:]}}
    out = {"rule": f"the highest of {list(CANDIDATES)} flagging at most {MOST_PETS_FLAGGED:.0%} of the choosing pets",
           "choosing photos": f"Oxford trainval ({len(oxford['trainval'].paths)}), not-pets 1-{CHOOSING_NOT_PETS}",
           "kinds": {}}
    probabilities = {part: {name: kind_shares(paths, args.cache_dir) for name, paths in named.items()}
                     for part, named in sets.items()}
    for kinds, (pet_kinds, current) in PET_KINDS.items():
        columns = [KIND_NAMES.index(kind) for kind in pet_kinds]
        shares = {part: {name: p[:, columns].sum(1) for name, p in named.items()}
                  for part, named in probabilities.items()}
        flagged = {t: {part: {name: (s < t).float().mean().item() for name, s in named.items()}
                       for part, named in shares.items()} for t in CANDIDATES}
        allowed = [t for t in CANDIDATES if flagged[t]["choosing"]["pets"] <= MOST_PETS_FLAGGED]
        chosen = max(allowed) if allowed else min(CANDIDATES)
        out["kinds"][kinds] = {"in use": current, "chosen": chosen, "flagged": {str(t): f for t, f in flagged.items()},
                               "photos": {part: {n: len(p) for n, p in named.items()} for part, named in sets.items()}}
        print(f"{kinds}: chosen {chosen} (in use {current}); measured at it: "
              + ", ".join(f"{name} {rate:.1%}" for name, rate in flagged[chosen]["measured"].items()))
    out["kind command"] = kind_figures(sets["measured"]["cats-vs-dogs val/"], sets["measured"]["not pets"])
    print("kind:", out["kind command"])
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
