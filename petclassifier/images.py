"""Load any photo a user has as an upright RGB image; the one loader for training, evaluation and prediction."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit (about 9,500 x 9,500)
BACKGROUND = (128, 128, 128)  # transparent pixels become neutral grey, not black


class ImageError(Exception):
    """A file that cannot be read as an image."""


def is_image_file(path: str | Path) -> bool:
    """True for names with an image extension; .DS_Store, Thumbs.db and notes are not images."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def load_image(path: str | Path, min_size: int | None = None) -> Image.Image:
    """Open a photo whatever its real format, rotate it upright from EXIF and return it as 8-bit RGB.

    With `min_size`, a large JPEG is decoded at a reduced scale whose short side stays at least that big.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"{img.width}x{img.height} pixels is over the {MAX_PIXELS:,} pixel limit")
                img.seek(0)  # first frame of an animated GIF
                if min_size and img.format == "JPEG":
                    scale = min_size / min(img.size)
                    img.draft("RGB", (round(img.width * scale), round(img.height * scale)))
                img.load()
                return to_rgb(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: {e}") from None


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


def square_uint8(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to `size` (bicubic, antialiased) and centre-crop a square: uint8 [3, size, size]."""
    img = TF.center_crop(TF.resize(img, size, interpolation=TF.InterpolationMode.BICUBIC), [size, size])
    return TF.pil_to_tensor(img)
