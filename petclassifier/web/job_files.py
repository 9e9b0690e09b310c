"""The files of teaching jobs: each server's folder of jobs (and sweeping those of servers killed), a job's log and
JSON reports read back for the page."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

KEEP_SECONDS = 3600  # a finished job's photos, run folder and model are removed this long after it ended
ROOT_PREFIX, OWNER = "petclassifier-jobs-", "server.pid"  # each server's folder of jobs, and the file naming it


def sweep_abandoned() -> None:
    """Remove the job folders whose server has ended without removing them (killed): its process is gone, or, for
    a folder of an earlier version (no owner named), it is over KEEP_SECONDS old."""
    for root in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        try:
            owner = int((root / OWNER).read_text())
        except (OSError, ValueError):
            owner = None
        try:
            abandoned = not alive(owner) if owner else time.time() - root.stat().st_mtime > KEEP_SECONDS
        except OSError:
            continue
        if abandoned:
            shutil.rmtree(root, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether a process of this machine has this id."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def last_line(path: Path) -> str:
    """The last line a job's training printed: the phase it is in (frozen features, epoch, calibration)."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            lines = log.read().decode("utf-8", "replace").replace("\r", "\n").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def failure_line(log: Path, code: int) -> str:
    """Why a job failed: training's own one-line error, or its exit status."""
    line = last_line(log)
    return line.removeprefix("error: ") if line.startswith("error: ") else f"training stopped (status {code}): {line}"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def findings_by_photo(found: dict | None) -> dict | None:
    """The doctor's findings on a job's photos with each photo named by its place in the upload (the page holds the
    photos in that order; the files are named by it): label_issues, duplicates, not_pets."""
    if found is None:
        return None

    def place(path: str) -> int:
        return int(Path(path).stem)

    return {"label_issues": [{"photo": place(f["path"]), "given": f["given"], "suggested": f["suggested"],
                              "score": f["score"]} for f in found["label_issues"]],
            "duplicates": [{"photos": sorted(map(place, d["paths"])), "kind": d["kind"]} for d in found["duplicates"]],
            "not_pets": [{"photo": place(f["path"]), "kind": f["kind"]} for f in found["not_pets"]]}
