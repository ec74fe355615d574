"""The one user-facing error type (core: imports nothing from poisonlab)."""


class PoisonlabError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with code 2, never a traceback."""
