"""Load any photo a user has as an upright RGB image; the one loader for training, evaluation and prediction.

Pillow and NumPy only: answering from a checkpoint's ONNX copy decodes photos without loading PyTorch.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".avif", ".heic", ".heif")
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit (about 9,500 x 9,500)
BACKGROUND = (128, 128, 128)  # transparent pixels become neutral grey, not black
DECODER_VERSION = 2  # raise whenever load_image or square_uint8 change the squares they make: cached ones go stale


try:  # HEIC/HEIF phone photos, where the pillow-heif plugin is installed (the web extra brings it)
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:
    pass


class ImageError(Exception):
    """A file that cannot be read as an image."""


def is_image_file(path: str | Path) -> bool:
    """True for names with an image extension; .DS_Store, Thumbs.db and notes are not images."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def is_photo_under(path: str | Path, root: str | Path) -> bool:
    """An image file under `root` and not inside a hidden folder (.git, .thumbnails) below it."""
    return is_image_file(path) and not any(part.startswith(".") for part in Path(path).relative_to(root).parts)


def photos_under(root: str | Path) -> list[str]:
    """The image files under a folder from its listings alone (no stat per file), in ImageFolder's order."""
    # Hidden folders are left out. Linked folders are followed, as ImageFolder does, but not a link to a folder it
    # sits in: that would list the same photos forever. So each folder goes with the real paths of it and its parents.
    found, folders = {}, [(str(root), (os.path.realpath(root),))]
    while folders:
        folder, inside = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # a folder the user cannot list (or a dangling link) holds none of their photos
            continue
        found[folder] = sorted(e.name for e in entries if is_image_file(e.name) and e.is_file())
        for e in entries:
            if e.is_dir() and not e.name.startswith("."):
                real = os.path.realpath(e.path) if e.is_symlink() else os.path.join(inside[-1], e.name)
                if real not in inside:
                    folders.append((e.path, (*inside, real)))
    return [os.path.join(folder, name) for folder in sorted(found) for name in found[folder]]


def open_checked(path: str | Path) -> Image.Image:
    """Open a photo's header (no pixels decoded yet), refusing decompression bombs before they use memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            count = re.search(r"\d+", str(e))  # Pillow's message starts with the image's pixel count
            pixels = f"{int(count[0]):,} pixels" if count else "its size"
            raise ImageError(f"{pixels} is over the {MAX_PIXELS:,} pixel limit") from None
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise ImageError(f"{img.width}x{img.height} pixels is over the {MAX_PIXELS:,} pixel limit")
    return img


def check_image(path: str | Path) -> None:
    """The fast check run over a whole dataset: the header names a known format and a sane size, or ImageError."""
    try:
        open_checked(path).close()
    except ImageError:
        raise
    except Exception as e:  # Pillow's format plugins raise many exception types on malformed files
        raise ImageError(reason(e)) from None


def decoder_key() -> str:
    """What shapes a decoded square besides its file, size and interpolation: this decoder and Pillow's version."""
    return f"decoder {DECODER_VERSION}, Pillow {PIL.__version__}, background {BACKGROUND}"


def load_image(path: str | Path, min_size: int | None = None) -> Image.Image:
    """Open a photo whatever its real format, rotate it upright from EXIF and return it as 8-bit RGB.

    With `min_size`, a large JPEG is decoded at a reduced scale whose short side stays at least that big.
    Anything unreadable (corrupt, truncated, not an image, too many pixels) raises ImageError with the reason.
    """
    try:
        with open_checked(path) as img:
            img.seek(0)  # first frame of an animated GIF
            if min_size and img.format == "JPEG":
                scale = min_size / min(img.size)
                img.draft("RGB", (round(img.width * scale), round(img.height * scale)))
            img.load()
            return to_rgb(upright(img))
    except ImageError:
        raise
    except Exception as e:  # Pillow's format plugins raise many exception types on malformed files
        raise ImageError(reason(e)) from None


def upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the photo as stored rather than losing it."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def reason(error: Exception) -> str:
    """One line saying why a file could not be read."""
    if isinstance(error, FileNotFoundError):  # gone since it was listed, or a path that never existed
        return "no such file or folder"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, UnidentifiedImageError) or "cannot identify image file" in text:
        return "not an image (unknown or damaged format)"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB: alpha composited on grey, 16-bit scaled down, CMYK and palettes converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")  # 16-bit range to 8-bit
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, BACKGROUND + (255,))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def square_uint8(img: Image.Image, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Resize the short side to `size` (antialiased; bicubic or bilinear) and centre-crop a square: [3, size, size].

    The arithmetic of torchvision's resize and centre crop on PIL images, which made the squares of earlier releases.
    """
    if max(img.size) > 2 * min(img.size):  # a thin strip resized by its short side could need gigabytes
        side = min(img.size)
        img = centre_crop(img, min(img.width, 2 * side), min(img.height, 2 * side))
    (w, h), short = img.size, min(img.size)
    long = int(size * max(w, h) / short)
    resized = (size, long) if w <= h else (long, size)
    if resized != img.size:
        img = img.resize(resized, resample=getattr(Image.Resampling, interpolation.upper()))
    return np.array(centre_crop(img, size)).transpose(2, 0, 1)


def decoded_square(source, size: int, interpolation: str = "bicubic") -> np.ndarray | str:
    """A photo (a path or a file object) as the uint8 square [3, size, size] the network sees, or why it cannot be
    read."""
    try:
        return square_uint8(load_image(source, min_size=size), size, interpolation)
    except ImageError as e:
        return str(e)


def decoded_batches(batches: Sequence[Sequence], size: int, interpolation: str = "bicubic",
                    workers: int = 0) -> Iterator[list[np.ndarray | str]]:
    """Each batch of photos (paths or file objects) as `decoded_square` gives them, in order: the one decoding pool.

    The cache, predict and the ONNX copy decode through it: `workers` processes, at most two batches each ahead of
    the reader, so memory stays flat however many photos there are; the processes end with the loop, also when it
    is left early. Forked where the system allows, as PyTorch's DataLoader does on Linux: nothing is imported again.
    """
    workers = min(workers, len(batches)) if len(batches) > 1 else 0  # processes for one batch only cost time
    if workers == 0:
        yield from (decoded_batch(batch, size, interpolation) for batch in batches)
        return
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with context.Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        waiting = deque()  # Ctrl-C stops the reader, whose leaving the pool ends the workers without a traceback each
        for batch in batches:
            waiting.append(pool.apply_async(decoded_batch, (batch, size, interpolation)))
            if len(waiting) > 2 * workers:
                yield waiting.popleft().get()
        while waiting:
            yield waiting.popleft().get()


def decoded_batch(photos: Sequence, size: int, interpolation: str) -> list[np.ndarray | str]:
    return [decoded_square(photo, size, interpolation) for photo in photos]


def readable(decoded: list[np.ndarray | str]) -> tuple[list[str | None], np.ndarray | None]:
    """A decoded batch as (each photo's reason it cannot be read, None where it can; the readable squares stacked,
    [N, 3, R, R], or None when there are none)."""
    squares = [x for x in decoded if not isinstance(x, str)]
    return [x if isinstance(x, str) else None for x in decoded], np.stack(squares) if squares else None


def centre_crop(image, width: int, height: int | None = None):
    """The central width x height part (a square when height is None) of a PIL image or an array [..., H, W].

    The one centre crop: the cached squares and the network's view both take it, at the offsets of torchvision's
    CenterCrop (which rounds half a pixel to even), so a model sees what its weights' own transform would show it.
    """
    height = width if height is None else height
    full_height, full_width = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[-2:]
    top, left = int(round((full_height - height) / 2.0)), int(round((full_width - width) / 2.0))
    if isinstance(image, Image.Image):
        return image.crop((left, top, left + width, top + height))
    return image[..., top : top + height, left : left + width]


def expand_paths(paths: list[str], missing_ok: bool = False) -> list[Path]:
    """Files as given, and the image files under each folder (hidden folders left out), recursively, sorted.

    A path that does not exist is an error, or with `missing_ok` kept in its place for the caller to report.
    """
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(map(Path, photos_under(p)))
        elif p.exists() or missing_ok:
            out.append(p)
        else:
            raise UserError(f"no such file or folder: {p}")
    return out
