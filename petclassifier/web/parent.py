"""A process that ends with the one that started it: the server's teaching workers, however the server ends."""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Iterator


def lines_from_parent() -> Iterator[str]:
    """The lines the starter writes on our stdin, one at a time, as they come. From this call on, when it closes (the
    starter has ended, SIGKILL included: the kernel closes its end of the pipe), our whole process group ends at
    once, whatever it is doing, decoding workers too."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        stdin, pending = 0, b""
        try:  # the descriptor itself: sys.stdin's lock, held by a reading daemon thread, would stop the exit
            while chunk := os.read(stdin, 65536):
                *whole, pending = (pending + chunk).split(b"\n")
                for line in whole:
                    lines.put(line.decode())
        except OSError:
            pass
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=read, name="ends-with-parent", daemon=True).start()  # now, not at the first line asked
    return iter(lines.get, None)


def end_group(process) -> None:
    """End a process started in a session of its own, with everything it started, and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        process.kill()
    process.wait()
