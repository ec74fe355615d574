"""poisonlab: data protection (unlearnable examples) and poisoning benchmarks in PyTorch."""

__version__ = "0.1.0"


class PoisonlabError(Exception):
    """A user-facing error: the CLI prints its message, never a traceback."""
