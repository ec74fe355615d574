"""Small PNG renderings shared by the report and the web page: an image, and its noise amplified."""

import io

import numpy as np
from PIL import Image


def png_bytes(chw: np.ndarray, min_side: int = 96) -> bytes:
    """uint8 (C,H,W) -> PNG bytes, enlarged by a whole factor (nearest) so that tiny images stay visible."""
    a = np.asarray(chw, dtype=np.uint8)
    a = a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))
    im = Image.fromarray(a)
    k = max(1, -(-min_side // max(1, min(im.size))))
    if k > 1:
        im = im.resize((im.size[0] * k, im.size[1] * k), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def amplified(delta: np.ndarray) -> np.ndarray:
    """Signed noise (C,H,W) -> uint8 picture: zero is mid-grey and the image's largest change maps to full
    scale, so a noise of 1/255 is as visible as one of 16/255."""
    d = np.asarray(delta, dtype=np.float32)
    peak = float(np.abs(d).max()) or 1.0
    return np.clip(np.round(127.5 + d * (127.5 / peak)), 0, 255).astype(np.uint8)


def sample_indices(labels, k: int = 8) -> list:
    """Up to k indices, first one per class (in class order), then the next ones in order."""
    labels = [int(v) for v in labels]
    first = {}
    for i, y in enumerate(labels):
        first.setdefault(y, i)
    picked = [first[y] for y in sorted(first)][:k]
    for i in range(len(labels)):
        if len(picked) >= k:
            break
        if i not in picked:
            picked.append(i)
    return sorted(picked)
