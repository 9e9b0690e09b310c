"""Contact sheets of the doctor's findings: each photo a thumbnail with its caption, on one JPEG per list, for a
person to look through. Pillow only."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..data.images import ImageError, load_image

TILE, CAPTION, COLUMNS, MOST = 160, 34, 8, 64  # thumbnail side, caption height (px), tiles a row, tiles a sheet
try:
    FONT = ImageFont.load_default(size=12)  # Pillow 10.1 and later: a scalable font with its spaces
except TypeError:
    FONT = ImageFont.load_default()


def tile(path: str, lines: list[str]) -> Image.Image:
    """The photo's thumbnail (grey where it cannot be read) above its caption lines."""
    out = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    try:
        photo = load_image(path, TILE)
        photo.thumbnail((TILE, TILE))
        out.paste(photo, ((TILE - photo.width) // 2, (TILE - photo.height) // 2))
    except ImageError:
        ImageDraw.Draw(out).rectangle([0, 0, TILE - 1, TILE - 1], fill=(200, 200, 200))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines[:2]):
        draw.text((3, TILE + 2 + 15 * i), line[:26], fill=(20, 20, 20), font=FONT)
    return out


def sheet(tiles: list[Image.Image], path: Path) -> Path:
    """The tiles in rows of COLUMNS, written to `path`."""
    rows = (len(tiles) + COLUMNS - 1) // COLUMNS
    canvas = Image.new("RGB", (COLUMNS * (TILE + 4), rows * (TILE + CAPTION + 4)), (235, 235, 235))
    for i, t in enumerate(tiles):
        canvas.paste(t, ((i % COLUMNS) * (TILE + 4) + 2, (i // COLUMNS) * (TILE + CAPTION + 4) + 2))
    canvas.save(path, quality=85)
    return path


def draw_sheets(found: dict, folder: Path) -> list[Path]:
    """label_issues.jpg, duplicates.jpg and not_pets.jpg in `folder` (those with findings; the first MOST of each)."""
    folder.mkdir(parents=True, exist_ok=True)
    lists = {
        "label_issues": [tile(f["path"], [f"{f['given']} -> {f['suggested']}",
                                          f"{f['score']:.2f} {Path(f['path']).name}"])
                         for f in found["label_issues"][:MOST]],
        "duplicates": [tile(p, [f"group {g + 1} ({d['kind']})", Path(p).name])
                       for g, d in enumerate(found["duplicates"][: MOST // 2]) for p in d["paths"][:4]][:MOST],
        "not_pets": [tile(f["path"], [f["kind"], Path(f["path"]).name]) for f in found["not_pets"][:MOST]],
    }
    return [sheet(tiles, folder / f"{name}.jpg") for name, tiles in lists.items() if tiles]
