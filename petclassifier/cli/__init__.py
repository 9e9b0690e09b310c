"""The command line: a parser and a runner per command (`petclassifier COMMAND`), shared by the scripts."""

from .commands import main

__all__ = ["main"]
