#!/usr/bin/env python
"""Rebuild data/oxford-iiit-pet: a few photos per breed from a full Oxford-IIIT Pet copy, resized to save space.

    python scripts/make_sample.py SOURCE_ROOT   # SOURCE_ROOT holds oxford-iiit-pet/ (images/, annotations/)
    python scripts/make_sample.py SOURCE_ROOT --per-breed 1000 1000 --short-side 300 --out .gpu-data  # all, smaller
"""

import argparse
import shutil
from collections import defaultdict
from pathlib import Path

from PIL import Image

SAMPLE = Path(__file__).resolve().parent.parent / "data"
KEEP_AS_IS = {"Abyssinian_34", "Abyssinian_5"}  # a GIF and an RGBA PNG named .jpg, as in the original dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path)
    p.add_argument("--per-breed", type=int, nargs=2, default=(7, 3), metavar=("TRAINVAL", "TEST"))
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--out", type=Path, default=SAMPLE, help="the root to write oxford-iiit-pet/ into (default data/)")
    args = p.parse_args()
    src, out = args.source / "oxford-iiit-pet", args.out / "oxford-iiit-pet"
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    kept_ids = []
    for split, per_breed in zip(("trainval", "test"), args.per_breed):
        lines = (src / "annotations" / f"{split}.txt").read_text().splitlines()
        by_breed = defaultdict(list)
        for line in lines:
            by_breed[line.split()[1]].append(line)
        chosen = [line for breed in by_breed.values() for line in sorted(breed, key=sort_key)[:per_breed]]
        chosen += [line for line in lines if line.split()[0] in KEEP_AS_IS and line not in chosen]
        (out / "annotations" / f"{split}.txt").write_text("\n".join(sorted(chosen, key=sort_key)) + "\n")
        kept_ids += [line.split()[0] for line in chosen]
    header = [line for line in (src / "annotations" / "list.txt").read_text().splitlines() if line.startswith("#")]
    rows = {line for f in ("trainval", "test") for line in (out / "annotations" / f"{f}.txt").read_text().splitlines()}
    (out / "annotations" / "list.txt").write_text("\n".join(header + sorted(rows, key=sort_key)) + "\n")
    for image_id in kept_ids:
        source, target = src / "images" / f"{image_id}.jpg", out / "images" / f"{image_id}.jpg"
        if image_id in KEEP_AS_IS:
            shutil.copyfile(source, target)
            continue
        img = Image.open(source).convert("RGB")
        scale = args.short_side / min(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        img.save(target, quality=85, optimize=True)
    print(f"{len(kept_ids)} photos in {out}")


def sort_key(line: str):
    name, _, number = line.split()[0].rpartition("_")
    return name.lower(), int(number)


if __name__ == "__main__":
    main()
