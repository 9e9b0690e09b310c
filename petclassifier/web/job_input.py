"""What a teaching job is given, checked before anything trains: a class name for each photo, the page's settings
and the photos themselves, each refusal one line saying what to fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import BinaryIO

from ..data.images import IMAGE_EXTENSIONS, ImageError, open_checked, reason

MAX_JOB_PHOTOS = 500  # photos per job: "10 to a few hundred" fit
MIN_CLASS_PHOTOS = 2  # one to learn from and one held out to score on; 10 or more learn well
MAX_NAME = 100  # characters in a class name
# the page's "under the hood" settings: train's flags of the same names; a blank field keeps the recipe's value
OPTIONS = {"epochs": (int, 1, 1000), "batch_size": (int, 1, 512), "lr": (float, 1e-6, 1.0)}
FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
                 "TIFF": ".tif", "AVIF": ".avif", "HEIF": ".heic"}


class Refused(Exception):
    """A request the jobs cannot take: its HTTP status and what to fix, in one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_labels(labels: str | None, photos: int) -> list[str]:
    """The class name of each photo from the `labels` field, or Refused saying what to fix."""
    if not photos:
        raise Refused(400, "no photos: send each one as a 'file' field, with its class in 'labels'")
    if photos > MAX_JOB_PHOTOS:
        raise Refused(413, f"{photos} photos: a job takes at most {MAX_JOB_PHOTOS}")
    try:
        names = json.loads(labels) if labels is not None else None
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise Refused(400, "'labels' must be a JSON list of class names, one per photo in upload order, e.g. "
                           '["cat", "cat", "dog"]')
    if len(names) != photos:
        raise Refused(400, f"'labels' names {len(names)} classes for {photos} photos: give one per photo")
    names = [n.strip() for n in names]
    for name in names:
        if not name:
            raise Refused(400, "a class has no name: type one for every class")
        if name.startswith(".") or "/" in name or "\\" in name or "\0" in name or len(name) > MAX_NAME:
            raise Refused(400, f"class name {name[:MAX_NAME]!r}: use at most {MAX_NAME} characters, none of / \\, "
                               "and no leading dot")
    if len(set(names)) < 2:
        raise Refused(400, f"only one class ({names[0]!r}): a classifier needs photos of at least two")
    return names


def parse_options(settings: dict[str, str]) -> dict:
    """The page's settings as train's flags (blank ones left to the recipe), or Refused naming the bad one."""
    options = {}
    for key, (kind, low, high) in OPTIONS.items():
        text = (settings.get(key) or "").strip()
        if not text:
            continue
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            what = "a whole number" if kind is int else "a number"
            raise Refused(400, f"{key.replace('_', ' ')} {text!r}: give {what} from {low:g} to {high:g}, or leave it "
                               "blank for the recipe's")
        options[key] = value
    return options


def write_photos(folder: Path, uploads: list[tuple[str, BinaryIO]], names: list[str]) -> None:
    """Each upload to folder/<class>/<number><suffix of its format>, or Refused naming the files that are not
    photos."""
    bad = []
    for i, ((filename, source), name) in enumerate(zip(uploads, names)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        path = folder / name / f"{i:04d}"
        source.seek(0)
        with open(path, "wb") as out:
            shutil.copyfileobj(source, out)
        try:
            with open_checked(path) as img:
                suffix = FORMAT_SUFFIX.get(img.format or "", "")
        except Exception as e:  # as training's own check: Pillow's plugins raise many kinds on damaged files
            bad.append(f"{filename} ({e if isinstance(e, ImageError) else reason(e)})")
            continue
        suffix = suffix or Path(filename).suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            bad.append(f"{filename} (a {suffix or 'file'} the training does not read)")
            continue
        path.rename(path.with_suffix(suffix))
    if bad:
        raise Refused(400, f"{len(bad)} file(s) are not photos it can learn from: {'; '.join(bad[:5])}"
                           f"{'; ...' if len(bad) > 5 else ''}; remove them and train again")
