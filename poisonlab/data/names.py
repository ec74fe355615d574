"""Names that come from data (class names, archive members, file names) become paths under OUT: check them.

A name is used only if every part of it is an ordinary file name: not empty, not "." or "..", no "/" or
"\\", no NUL or other control characters, not hidden (a leading "." would also be skipped when the tree is
read back), at most 255 bytes. Anything else is refused with an error naming the source, never cleaned up
silently, so what is written is exactly what was read.
"""

from pathlib import PurePosixPath

from .. import PoisonlabError


def _bad_part(part: str) -> str | None:
    if not part:
        return "an empty part"
    if part in (".", ".."):
        return f"{part!r}"
    if part.startswith("."):
        return "a hidden (dot) name"
    if "/" in part or "\\" in part:
        return "a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in part):
        return "a control character"
    if len(part.encode("utf-8", "surrogateescape")) > 255:
        return "more than 255 bytes"
    return None


def check_component(name, what: str) -> str:
    """name must be one ordinary file name (e.g. a class name, used as a folder under OUT)."""
    if not isinstance(name, str):
        raise PoisonlabError(f"{what}: {name!r} is not a text name")
    bad = _bad_part(name)
    if bad:
        raise PoisonlabError(f"{what}: {name!r} is not a plain file name ({bad}); refusing to use it as a path")
    return name


def check_relpath(name, what: str) -> str:
    """name must be a relative path of ordinary file names, e.g. "cat/0001.png"."""
    if not isinstance(name, str) or not name or name.startswith("/"):
        raise PoisonlabError(f"{what}: {name!r} is not a relative path; refusing to use it")
    for part in name.split("/"):
        bad = _bad_part(part)
        if bad:
            raise PoisonlabError(f"{what}: {name!r} has {bad}; refusing to use it as a path")
    return str(PurePosixPath(name))
