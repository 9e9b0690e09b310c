#!/usr/bin/env python
"""Build the Oxford-IIIT Pet subset the README's figures were measured on: 1,000 trainval and 864 test photos of all
37 breeds, their ids in petclassifier/data/subset/, taken from the full dataset (downloaded with --download, 800 MB
once).

    python scripts/make_subset.py --download --out ~/datasets/pet-subset
    python scripts/make_subset.py --source ~/datasets --out ~/datasets/pet-subset   # SOURCE holds oxford-iiit-pet/
    petclassifier train --dataset oxford-iiit-pet --data-dir ~/datasets/pet-subset

About half of the subset's photos were measured as 299 x 299 copies re-encoded to JPEG; the download has the
originals, so figures may differ from the table by a few tenths of a point.
"""

import argparse
import shutil
import sys
from pathlib import Path

import petclassifier
from petclassifier.data.oxford import download_oxford
from petclassifier.errors import UserError

IDS = Path(petclassifier.__file__).parent / "data" / "subset"
HEADER = ("# columns: image-id class-id(1..37, breeds in case-insensitive alphabetical order) species(1 cat, 2 dog) "
          "breed-id(within its species)\n")


def annotation_lines(source: Path) -> dict[str, str]:
    """Every image id of the full dataset's split lists, with its line."""
    lines = {}
    for split in ("trainval", "test"):
        for line in (source / "annotations" / f"{split}.txt").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                lines[line.split()[0]] = line
    return lines


def build(source: Path, out: Path) -> int:
    """Copy the subset's photos and write its annotations under out/oxford-iiit-pet; returns the photos copied."""
    lines, target = annotation_lines(source), out / "oxford-iiit-pet"
    (target / "images").mkdir(parents=True, exist_ok=True)
    (target / "annotations").mkdir(parents=True, exist_ok=True)
    every = []
    for split in ("trainval", "test"):
        ids = (IDS / f"{split}.txt").read_text().split()
        if missing := [i for i in ids if i not in lines or not (source / "images" / f"{i}.jpg").is_file()]:
            raise UserError(f"{len(missing)} photos of the subset are not in {source} (first: {missing[0]})")
        for i in ids:
            shutil.copy2(source / "images" / f"{i}.jpg", target / "images" / f"{i}.jpg")
        (target / "annotations" / f"{split}.txt").write_text("".join(lines[i] + "\n" for i in ids))
        every += ids
    (target / "annotations" / "list.txt").write_text(HEADER + "".join(lines[i] + "\n" for i in sorted(every)))
    return len(every)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, help="a folder holding the full oxford-iiit-pet/")
    where.add_argument("--download", action="store_true", help="download the full dataset into OUT/full first")
    p.add_argument("--out", type=Path, required=True, help="the folder to write oxford-iiit-pet/ into")
    args = p.parse_args()
    try:
        source = args.source
        if args.download:
            source = args.out / "full"
            source.mkdir(parents=True, exist_ok=True)
            download_oxford(source)
        copied = build(source / "oxford-iiit-pet", args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {copied:,} photos and their annotations to {args.out / 'oxford-iiit-pet'}; train with "
          f"--dataset oxford-iiit-pet --data-dir {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
