"""Photo files as users have them: every format and mode a loader must accept, and the files it must refuse."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import SAMPLE

MISNAMED = ("Abyssinian_34.jpg", "Abyssinian_5.jpg")  # a GIF and a PNG with alpha, as in the real dataset


def base(size=(40, 30), seed=0) -> Image.Image:
    """A small RGB photo of noise, different for every seed."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def exif_rotated(path: Path, seed: int) -> None:
    """A 40x20 JPEG, red on its left half, whose EXIF says: turn 90 degrees clockwise to show it."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    img.save(path, "JPEG", exif=exif, quality=95)


def transparent(path: Path, mode: str) -> None:
    """A fully transparent image in `mode` (RGBA, LA, or P with a transparent palette index)."""
    if mode == "P":
        img = Image.new("P", (16, 16), 0)
        img.putpalette([0, 0, 0] * 256)
        img.save(path, "PNG", transparency=0)
    else:
        Image.new(mode, (16, 16), (0,) * len(mode)).save(path, "PNG")


def sixteen_bit(path: Path, seed: int) -> None:
    values = np.random.default_rng(seed).integers(0, 65536, (24, 24), dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    img.save(path, "PNG")


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares `width` x `height` pixels (a decompression bomb) but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def truncated_jpeg(path: Path, seed: int) -> None:
    base((64, 64), seed).save(path, "JPEG", quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# name -> writer(path, seed): files that must load as RGB
GOOD = {
    "exif.jpg": exif_rotated,
    "gray.png": lambda p, s: base(seed=s).convert("L").save(p),
    "palette.png": lambda p, s: base(seed=s).convert("P").save(p),
    "rgba.png": lambda p, s: transparent(p, "RGBA"),
    "la.png": lambda p, s: transparent(p, "LA"),
    "ptrans.png": lambda p, s: transparent(p, "P"),
    "cmyk.jpg": lambda p, s: base(seed=s).convert("CMYK").save(p, "JPEG"),
    "sixteen.png": sixteen_bit,
    "photo.webp": lambda p, s: base(seed=s).save(p, "WEBP"),
    "photo.bmp": lambda p, s: base(seed=s).save(p, "BMP"),
    "photo.tiff": lambda p, s: base(seed=s).save(p, "TIFF"),
    "png_named.jpg": lambda p, s: base(seed=s).save(p, "PNG"),
    "gif_named.jpg": lambda p, s: base(seed=s).save(p, "GIF"),
    "thin.png": lambda p, s: base((1, 300), s).save(p),
    "wide.png": lambda p, s: base((300, 1), s).save(p),
    "dot.png": lambda p, s: base((1, 1), s).save(p),
}

# name -> writer(path, seed): files with an image extension that are not readable photos
BAD = {
    "truncated.jpg": truncated_jpeg,
    "corrupt.jpg": lambda p, s: p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4),
    "empty.jpg": lambda p, s: p.write_bytes(b""),
    "page.jpg": lambda p, s: p.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>"),
    "notes_named.jpg": lambda p, s: p.write_text("shopping list: cat food"),
    "bomb.png": lambda p, s: png_header(p, 30000, 30000),
}

# files a photo folder often holds that are not photos at all, and must be ignored rather than reported
JUNK = {".DS_Store": b"\x00\x00\x00\x01Bud1", "Thumbs.db": b"\xd0\xcf\x11\xe0", "notes.txt": b"not a photo"}


def write_all(folder: Path, kinds: dict, seed: int = 0) -> list[Path]:
    """Write every kind into `folder`; returns the paths, in the order of `kinds`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, write) in enumerate(kinds.items()):
        write(folder / name, seed * 100 + i)
        paths.append(folder / name)
    return paths


def write_junk(folder: Path) -> None:
    for name, data in JUNK.items():
        (folder / name).write_bytes(data)


def copy_misnamed(folder: Path) -> list[Path]:
    """Copies of the two real misnamed photos from the bundled sample."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in MISNAMED:
        (folder / name).write_bytes((SAMPLE / "oxford-iiit-pet" / "images" / name).read_bytes())
        out.append(folder / name)
    return out
