"""A process that ends with the one that started it: the server's teaching jobs, however the server ends."""

from __future__ import annotations

import os
import signal
import sys
import threading

ENDS_WITH_STDIN = "PETCLASSIFIER_ENDS_WITH_STDIN"  # set by the starter, which holds the other end of our stdin


def end_with_parent() -> None:
    """Where the starter asks for it: once our stdin closes (the starter has ended, SIGKILL included: the kernel closes
    its end of the pipe), end our whole process group at once, decoding workers too."""
    if os.environ.get(ENDS_WITH_STDIN) != "1" or not hasattr(os, "killpg"):
        return

    def watch() -> None:
        try:  # the descriptor itself: sys.stdin's lock, held by a reading daemon thread, would stop the exit
            while os.read(stdin, 4096):
                pass
        except OSError:
            pass
        os.killpg(os.getpgid(0), signal.SIGKILL)

    stdin = sys.stdin.fileno()

    threading.Thread(target=watch, name="ends-with-parent", daemon=True).start()


def end_group(process) -> None:
    """End a process started in a session of its own, with everything it started, and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        process.kill()
    process.wait()
