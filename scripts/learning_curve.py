#!/usr/bin/env python
"""Learning curves: the default recipe trained on k photos a class, against a linear probe on the same features.

    python scripts/learning_curve.py --shared ../shared/data --json docs/learning-curve.json

For each set (cats-vs-dogs; cats, dogs and objects; the 37 Oxford breeds) and each k, k photos of every class are
drawn from the set's training photos (--draws times, all photos once). The recipe's side is `petclassifier train`
with nothing but the data given, on a folder of those photos with a test/ split: its refit model, temperature and
test score, exactly as a user gets them. The probe's side is multinomial logistic regression fitted to convergence
by L-BFGS on the inputs the head reads (pooled frozen features and the kinds of animal ImageNet's classifier sees;
centre crop, no augmentation, no flip), as they are or standardised on the k photos, and its L2 weight, both chosen
by 5-fold cross-validation on the k photos: the ceiling a linear head reaches on those inputs. (The kinds are 10 x
log-probabilities, down to -69: as they are, the fit came out 7-13 points short on the breeds; standardised on 10
photos, 21 points short on cats and dogs.) Both are scored on test photos
that none of those choices was made on: cats-vs-dogs val/, the not-pets after the first 100, Oxford's test list (on
which the breeds' recipe was tuned before docs/recipe-choice.json re-made its choices on trainval).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from petclassifier import train
from petclassifier.data.cache import decode_images
from petclassifier.data.oxford import oxford_splits
from petclassifier.data.splits import stratified_folds
from petclassifier.data.store import FeatureStore
from petclassifier.data.transforms import Preprocessing
from petclassifier.engine.frozen import Views, fast_frozen
from petclassifier.engine.metrics import expected_calibration_error
from petclassifier.models.registry import build_model

MODEL, CROP = "efficientnet_lite2", 260  # the default model, at its crop
OBJECTS_FOR_TRAINING = 100  # not-pets (sorted) 1-100 may be drawn for training; the other 99 are test photos
LAMBDAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def photo_sets(shared: Path) -> dict[str, dict]:
    """{set: {"classes", "train": [(path, label)], "test": [(path, label)]}}: what may be drawn, what is scored."""
    cvd, objects = shared / "cats-vs-dogs", images_in(shared / "not-pets")
    pets = {split: [(p, y) for y, c in enumerate(("cats", "dogs")) for p in images_in(cvd / split / c)]
            for split in ("train", "val")}
    names, splits, _ = oxford_splits(shared, "breed", ("trainval", "test"))
    breeds = [Path(splits["trainval"].paths[splits["trainval"].labels.index(i)]).stem.rsplit("_", 1)[0]
              for i in range(len(names))]
    return {
        "cats-dogs": {"classes": ["cats", "dogs"], "train": pets["train"], "test": pets["val"]},
        "cats-dogs-objects": {"classes": ["cats", "dogs", "objects"],
                              "train": pets["train"] + [(p, 2) for p in objects[:OBJECTS_FOR_TRAINING]],
                              "test": pets["val"] + [(p, 2) for p in objects[OBJECTS_FOR_TRAINING:]]},
        "oxford-breeds": {"classes": breeds, **{name: list(zip(splits[split].paths, splits[split].labels))
                                                for name, split in (("train", "trainval"), ("test", "test"))}},
    }


def draw(photos: list, k, seed: int) -> list:
    """k photos of every class (all of them for k = "all"), drawn reproducibly."""
    if k == "all":
        return photos
    generator, chosen = torch.Generator().manual_seed(seed), []
    for y in sorted({y for _, y in photos}):
        of_class = [photo for photo in photos if photo[1] == y]
        chosen += [of_class[i] for i in torch.randperm(len(of_class), generator=generator)[:k].tolist()]
    return chosen


def link_folder(root: Path, classes: list[str], splits: dict[str, list]) -> Path:
    """A class-folder tree of links to the photos: root/train/<class>/..., root/test/<class>/..."""
    for split, photos in splits.items():
        for path, y in photos:
            link = root / split / classes[y] / Path(path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(os.path.abspath(path))
    return root


def recipe_side(folder: Path, out: Path, cache: str) -> dict:
    """`petclassifier train` on the folder with the default recipe: its test accuracy and calibration."""
    started = time.perf_counter()
    summary = train(dataset="folder", data_dir=str(folder), out=str(out), cache_dir=cache)
    config = json.loads((out / "config.json").read_text())
    return {"accuracy": summary["test_accuracy"], "ece": summary["test_ece"],
            "temperature": summary["calibration"]["temperature"], "seconds": round(time.perf_counter() - started, 1),
            **{key: config[key] for key in ("batch_size", "epochs", "augment_views", "lr")}}


class Features:
    """What the default model's head reads of photos (centre crop): pooled frozen features and, beside them, the
    kinds of animal ImageNet's classifier sees; computed once per photo."""

    def __init__(self, cache: str):
        self.prep, self.cache, self.known = Preprocessing.for_model(MODEL, CROP), cache, {}
        model = build_model(MODEL, 2, pretrained=True, imagenet_stages=0, kinds=True)
        frozen, _ = model.split(0)
        self.frozen, self.kinds = fast_frozen(frozen, model.head[0]), model.kind_features()

    @torch.inference_mode()
    def __call__(self, paths: list[str]) -> torch.Tensor:
        new = [p for p in dict.fromkeys(paths) if p not in self.known]
        if new:
            rows, bad = decode_images(new, self.prep, self.cache, workers=2)
            kept = [p for p in new if p not in {b for b, _ in bad}]
            with FeatureStore(Path(self.cache) / "features") as store:
                views = Views(self.frozen, rows, self.prep, "probe", 1, False, 0, torch.device("cpu"), store)
                self.known.update(zip(kept, self.kinds(views[0][:].float().flatten(1))))
        return torch.stack([self.known[p] for p in paths])


def logistic_regression(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> torch.Tensor:
    """Weights [D + 1, C] minimising the mean cross-entropy + l2 * |W|^2 (bias unpenalised), by L-BFGS."""
    w = torch.zeros(x.shape[1] + 1, classes, dtype=torch.float64, requires_grad=True)
    x = x.double()
    optimizer = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ w[:-1] + w[-1], y) + l2 * w[:-1].square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def probe_side(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, classes: int) -> dict:
    """The probe's inputs (as they are, or standardised) and L2 weight by 5-fold cross-validated NLL on the training
    photos, then its accuracy and ECE on the test photos."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)  # from the training photos alone
    inputs = {"raw": (x, x_test), "standardised": ((x - mean) / std, (x_test - mean) / std)}
    folds = stratified_folds(y, max(2, min(5, int(torch.bincount(y).min()))), seed=0)

    def held_out_nll(choice: tuple[str, float]) -> float:
        (x, _), total = inputs[choice[0]], 0.0
        for fold in folds:
            kept = torch.ones(len(y), dtype=torch.bool)
            kept[fold] = False
            w = logistic_regression(x[kept], y[kept], classes, choice[1])
            total += F.cross_entropy(x[fold].double() @ w[:-1] + w[-1], y[fold], reduction="sum").item()
        return total

    kind, l2 = min(((kind, l2) for kind in inputs for l2 in LAMBDAS), key=held_out_nll)
    x, x_test = inputs[kind]
    w = logistic_regression(x, y, classes, l2)
    logits = x_test.double() @ w[:-1] + w[-1]
    return {"accuracy": (logits.argmax(1) == y_test).double().mean().item(),
            "ece": expected_calibration_error(logits.softmax(1), y_test), "l2": l2, "inputs": kind}


def averaged(group: list[dict], side: str, metric: str) -> float:
    return sum(r[side][metric] for r in group) / len(group)


def spread(group: list[dict], side: str) -> str:
    """' (96.4%-98.2%)': the range of a side's accuracy over the draws."""
    values = [r[side]["accuracy"] for r in group]
    return f" ({min(values):.1%}-{max(values):.1%})" if len(values) > 1 else ""


def markdown_table(rows: list[dict]) -> str:
    """The README's table: per set and k, the mean over draws (and the range) of each side's accuracy and ECE."""
    lines = ["| set | k a class | train photos | test photos | recipe: test accuracy | probe: test accuracy | "
             "recipe: ECE | probe: ECE | recipe - probe |", "|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["set"], r["k"]) for r in rows):
        g = [r for r in rows if (r["set"], r["k"]) == key]
        gap = 100 * (averaged(g, "recipe", "accuracy") - averaged(g, "probe", "accuracy"))
        lines.append(f"| {key[0]} | {key[1]} | {g[0]['train_photos']:,} | {g[0]['test_photos']:,} | "
                     f"{averaged(g, 'recipe', 'accuracy'):.1%}{spread(g, 'recipe')} | "
                     f"{averaged(g, 'probe', 'accuracy'):.1%}{spread(g, 'probe')} | "
                     f"{averaged(g, 'recipe', 'ece'):.3f} | {averaged(g, 'probe', 'ece'):.3f} | {gap:+.1f} points |")
    return "\n".join(lines)


def test_inputs(photos: dict, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
    return features([p for p, _ in photos["test"]]), torch.tensor([y for _, y in photos["test"]])


def probe_again(path: Path, sets: dict, features: Features) -> int:
    """The probe of every row of a JSON file fitted again on the row's own draw (after a change to the probe)."""
    report = json.loads(path.read_text())
    for row in report["rows"]:
        photos = sets[row["set"]]
        chosen = draw(photos["train"], row["k"], row["draw"])
        x, y = features([p for p, _ in chosen]), torch.tensor([y for _, y in chosen])
        row["probe"] = probe_side(x, y, *test_inputs(photos, features), len(photos["classes"]))
        print(json.dumps(row), flush=True)
        path.write_text(json.dumps(report, indent=2) + "\n")  # each row as it comes: a long run may be cut short
    print(markdown_table(report["rows"]))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data", help="the folder holding the three photo sets")
    parser.add_argument("--sets", default="cats-dogs,cats-dogs-objects,oxford-breeds")
    parser.add_argument("--ks", default="5,10,20,all", help="photos a class drawn for training")
    parser.add_argument("--draws", type=int, default=3, help="draws of k photos a class (all photos: one run)")
    parser.add_argument("--out", default="runs/learning-curve", help="folders, runs and caches")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--table", metavar="JSON", help="only print the README's table from a JSON file written before")
    parser.add_argument("--probe-again", metavar="JSON", help="only fit the probe of each row of a JSON file again "
                        "(the same draws) and write the file back")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())["rows"]))
        return 0
    shared, out = Path(args.shared), Path(args.out)
    if not (shared / "cats-vs-dogs").is_dir():
        print(f"error: no photo sets in {shared}", file=sys.stderr)
        return 2
    cache, sets, rows = str(out / "cache"), photo_sets(shared), []
    features = Features(cache)
    if args.probe_again:
        return probe_again(Path(args.probe_again), sets, features)
    for name in args.sets.split(","):
        photos = sets[name]
        x_test, test_labels = test_inputs(photos, features)
        for k in [k if k == "all" else int(k) for k in args.ks.split(",")]:
            for draw_seed in range(1 if k == "all" else args.draws):
                chosen = draw(photos["train"], k, draw_seed)
                tag = f"{name}-k{k}-d{draw_seed}"
                folder = link_folder(out / "folders" / tag, photos["classes"],
                                     {"train": chosen, "test": photos["test"]})
                recipe = recipe_side(folder, out / "runs" / tag, cache)
                x, y = features([p for p, _ in chosen]), torch.tensor([y for _, y in chosen])
                probe = probe_side(x, y, x_test, test_labels, len(photos["classes"]))
                rows.append({"set": name, "k": k, "draw": draw_seed, "train_photos": len(chosen),
                             "test_photos": len(test_labels), "recipe": recipe, "probe": probe})
                print(json.dumps(rows[-1]), flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps({"model": MODEL, "rows": rows}, indent=2) + "\n")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
