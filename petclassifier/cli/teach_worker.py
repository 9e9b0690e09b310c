"""The teaching workers' zygote, `python -m petclassifier.cli.teach_worker FOLDER DEVICE` (started by the
server, petclassifier.web.workers.Zygote): it imports the CLI once, then forks a worker for each request."""

from __future__ import annotations

import sys
from pathlib import Path

from ..web.workers import serve_forks, work


def main(folder: str, device: str) -> None:
    """The zygote: import all a job needs, then fork a worker for each request the server sends, until it ends."""
    from ..engine.backends import onnx_available
    from . import commands as cli  # the heavy imports, once for every worker

    onnx_available()  # imports the exporter too
    serve_forks(lambda n: work(Path(folder) / f"worker-{n}", device, cli.main))


if __name__ == "__main__":
    main(*sys.argv[1:3])
