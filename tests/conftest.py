"""Small fixtures shared by the foundation tests: tiny synthetic image sets and ImageFolder trees."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from poisonlab.data import ImageSet, save_imagefolder
from poisonlab.runtime import set_threads

# The tests' tensors are tiny: a second intra-op thread buys nothing and, on a loaded 2-core machine,
# every parallel region waits for a descheduled thread (measured: densenet121 forward 0.05 s with 1
# thread, ~9 s with 2). So the suite runs single-threaded unless POISONLAB_TEST_THREADS says otherwise;
# set in the environment so that `poisonlab` runs in-process (main() calls set_threads) and in
# subprocesses follow it too.
os.environ["POISONLAB_THREADS"] = os.environ.get("POISONLAB_TEST_THREADS", "1")
set_threads()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep decoded-array caches out of ~/.cache; shared by the whole session so the bundled set decodes once."""
    old = os.environ.get("POISONLAB_CACHE")
    os.environ["POISONLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("POISONLAB_CACHE", None)
    else:
        os.environ["POISONLAB_CACHE"] = old


def make_set(n=40, classes=4, channels=3, size=16, seed=0, learnable=False) -> ImageSet:
    """n random uint8 images, labels cycling over the classes. learnable=True gives every class its own
    brightness so that a tiny model can fit it in an epoch or two."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    if learnable:
        base = (labels.float() * 200 / max(classes - 1, 1) + 20).view(-1, 1, 1, 1)
        imgs = (base + torch.randn(n, channels, size, size, generator=g) * 12).clamp(0, 255)
    else:
        imgs = torch.rand(n, channels, size, size, generator=g) * 255
    names = [f"c{int(y)}/{i:04d}.png" for i, y in enumerate(labels)]
    return ImageSet(imgs.round().to(torch.uint8), labels, [f"c{k}" for k in range(classes)], names)


def write_image(path: Path, array: np.ndarray, fmt=None):
    """array: (H,W) gray or (H,W,3) RGB uint8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


@pytest.fixture
def tiny_set():
    return make_set()


@pytest.fixture
def tiny_tree(tmp_path):
    """root/train/<class>/*.png (48 images) and root/test/<class>/*.png (24), learnable, 3x16x16."""
    root = tmp_path / "tree"
    save_imagefolder(make_set(48, learnable=True, seed=1), root / "train")
    save_imagefolder(make_set(24, learnable=True, seed=2), root / "test")
    return root
