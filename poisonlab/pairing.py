"""One file-stem matcher: pair the images of two sets that hold the same pictures under different suffixes
(a protected PNG tree and its clean JPEG source, a decoded copy and its original)."""

from pathlib import PurePosixPath

from .errors import PoisonlabError


def stem(name: str) -> str:
    """'cat/0001.jpg' -> 'cat/0001': the relative name without its suffix."""
    return str(PurePosixPath(str(name)).with_suffix(""))


def match_stems(names, reference, what: str = "the reference set") -> list:
    """For every name, the index of the reference name with the same stem (a PoisonlabError naming the
    first name without a counterpart)."""
    if names is None or reference is None:
        raise PoisonlabError(f"pairing images with {what} needs file names on both sets")
    index = {stem(n): i for i, n in enumerate(reference)}
    try:
        return [index[stem(n)] for n in names]
    except KeyError as e:
        raise PoisonlabError(f"image {e.args[0]!r} has no counterpart in {what}") from None
