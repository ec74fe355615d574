"""Reading option values written as text (spec strings such as "jpeg:10" or "at:4/255", config values)."""

from .budget import parse_budget
from .errors import PoisonlabError


def parse_value(text: str):
    """'true'/'false'/'none', ints, floats, fractions such as 8/255; anything else stays a string."""
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if "/" in text:
        try:
            return parse_budget(text)
        except PoisonlabError:
            pass
    return text
