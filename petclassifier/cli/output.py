"""What several commands share: the checkpoint a command uses, the photos it is given, and how answers are printed."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from ..errors import UserError


def chosen_checkpoint(given: str | None, read=None) -> Path:
    """--checkpoint (a file or a run folder), or else the newest runs/*/best.pt, named with its task and classes
    (from `read(path)`: what the checkpoint holds; by default the checkpoint loaded)."""
    from ..models.checkpoint import checkpoint_file, describe, load_checkpoint, newest_checkpoint

    if given is not None:
        return checkpoint_file(given)
    newest = newest_checkpoint()
    print(f"using the newest checkpoint, {newest} ({describe((read or load_checkpoint)(newest))})", file=sys.stderr)
    return newest


def photo_paths(given: list[str], missing_ok: bool = False) -> list[Path]:
    """The photos a command is given (files, and the image files under folders), or one line saying there are none."""
    from ..data.images import expand_paths

    paths = expand_paths(given, missing_ok=missing_ok)
    if not paths:
        raise UserError(f"no image files found in {' '.join(given)}")
    return paths


def write_entries(entries, as_json: bool, as_jsonl: bool) -> bool:
    """Print each (JSON entry, its text line's maker) as it comes: text lines, one JSON array, or JSON lines; whether
    any photo was read (an entry without "error")."""
    read_any = False
    for i, (entry, text) in enumerate(entries):
        read_any |= "error" not in entry
        if as_jsonl:
            sys.stdout.write(json.dumps(entry) + "\n")
        elif as_json:  # the array json.dumps(results, indent=2) prints, one element at a time
            sys.stdout.write(("[\n" if i == 0 else ",\n") + textwrap.indent(json.dumps(entry, indent=2), "  "))
        else:
            sys.stdout.write(text() + "\n")
        sys.stdout.flush()  # each photo's result is seen as it is ready, when stdout is a file or a pipe too
    if as_json:
        sys.stdout.write("\n]\n")
    return read_any
