"""The one user-facing error type (core: imports nothing from poisonlab)."""


class PoisonlabError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with code 2, never a traceback."""


class LockedError(PoisonlabError):
    """Another poisonlab run holds the lock on this output; callers that can do other work first (the grid)
    skip it instead of stopping."""
