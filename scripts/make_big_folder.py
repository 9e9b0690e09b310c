#!/usr/bin/env python
"""Build a large cat/dog photo folder (25,000 photos by default) from real photos, to measure scale.

    python scripts/make_big_folder.py OUT [--count 25000] [--source ../shared/data]

Every photo is a random crop of a real cat or dog photo (cats-vs-dogs and Oxford-IIIT Pet), flipped at random,
with its brightness, contrast and colour changed, resized to 200-500 pixels on its long side and saved as a
JPEG: OUT/cat/*.jpg and OUT/dog/*.jpg, the layout of a user's own folders. Seeded: the same command gives the
same photos.
"""

import argparse
import random
from multiprocessing import Pool
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

DEFAULT_SOURCE = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def sources(root: Path) -> list[tuple[Path, str]]:
    """(photo, cat|dog) for every source photo: cats-vs-dogs folders and Oxford (capitalised breeds are cats)."""
    found = [(p, "cat" if p.parent.name == "cats" else "dog") for p in sorted(root.glob("cats-vs-dogs/*/*/*.jpg"))]
    found += [(p, "cat" if p.name[0].isupper() else "dog")
              for p in sorted(root.glob("oxford-iiit-pet/images/*.jpg"))]
    if not found:
        raise SystemExit(f"no source photos under {root} (cats-vs-dogs/, oxford-iiit-pet/images/)")
    return found


def make_one(job: tuple[int, Path, str, Path]) -> None:
    index, source, label, out = job
    rng = random.Random(index)
    img = Image.open(source).convert("RGB")
    w, h = img.size
    scale = rng.uniform(0.5, 1.0)  # crop keeps 25-100% of the area
    cw, ch = int(w * scale), int(h * scale)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(rng.uniform(0.7, 1.3))
    img.thumbnail((rng.randint(200, 500),) * 2, Image.Resampling.BICUBIC)
    img.save(out / label / f"{label}_{index:06d}.jpg", quality=rng.randint(75, 92))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=25_000)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="holds cats-vs-dogs/ and oxford-iiit-pet/")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    photos = sources(args.source)
    for label in ("cat", "dog"):
        (args.out / label).mkdir(parents=True, exist_ok=True)
    jobs = [(i, *photos[i % len(photos)], args.out) for i in range(args.count)]
    with Pool(args.workers) as pool:
        for done, _ in enumerate(pool.imap_unordered(make_one, jobs, chunksize=64), 1):
            if done % 5000 == 0:
                print(f"{done} photos")
    print(f"{args.count} photos in {args.out}")


if __name__ == "__main__":
    main()
