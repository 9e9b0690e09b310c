"""The error a user can cause and fix: the CLI prints its message on one line and exits with status 2."""


class UserError(Exception):
    """A mistake in the user's input (paths, flags, files), as opposed to a bug in this package."""


class SavedAndStopped(KeyboardInterrupt):
    """Ctrl-C while training, after last.pt was saved and the way to go on was printed: nothing more to say."""
