"""One hashing helper for every identity poisonlab computes: run keys, cache keys, data and source digests."""

import hashlib
import json
from pathlib import Path

import torch

from .data import bundled_path
from .fileio import sha256_file


def digest(obj, length: int = 16) -> str:
    """sha256 of a JSON-serialisable object (keys sorted; other values by str), cut to `length` hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def bytes_hash(*chunks: bytes, length: int = 64) -> str:
    """sha256 over byte strings, in order."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:length]


def tensor_hash(*tensors: torch.Tensor, length: int = 64) -> str:
    """sha256 over the raw bytes of CPU tensors, in order (e.g. images, then labels)."""
    return bytes_hash(*(t.detach().to("cpu").contiguous().numpy().tobytes() for t in tensors), length=length)


def tree_hash(root) -> str:
    """sha256 of a folder: every file's relative path and content hash, in sorted order."""
    root = Path(root)
    h = hashlib.sha256()
    for f in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def source_hash(source) -> str:
    """The digest of a data source as given on the command line: bundled set, file, or folder."""
    src = str(source)
    if src.startswith("bundled"):
        return sha256_file(bundled_path(src.split(":", 1)[1] if ":" in src else "cifar10-mini"))
    p = Path(src)
    return sha256_file(p) if p.is_file() else tree_hash(p)
