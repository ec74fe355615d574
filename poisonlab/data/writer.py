"""Write an ImageSet as an ImageFolder tree of lossless PNGs; whole output folders appear atomically."""

import contextlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .. import PoisonlabError
from .imageset import ImageSet


def png_names(ds: ImageSet):
    """Output names mirror the input's relative names with a .png suffix."""
    if ds.names is None:
        return [f"{ds.classes[int(l)]}/{i:06d}.png" for i, l in enumerate(ds.labels)]
    names = [str(Path(n).with_suffix(".png")) for n in ds.names]
    if len(set(names)) != len(names):
        raise PoisonlabError("two input images map to the same output name (e.g. a.jpg and a.png)")
    return names


def write_pngs(ds: ImageSet, root) -> list:
    root = Path(root)
    names = png_names(ds)
    imgs = ds.images.numpy()
    def one(i):
        p = root / names[i]
        p.parent.mkdir(parents=True, exist_ok=True)
        a = imgs[i]
        Image.fromarray(a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))).save(p, format="PNG")
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, range(len(imgs))))
    return names


def check_output_dir(out_dir, overwrite=False, inputs=()):
    """Refuse to write over existing data or into/over an input."""
    out = Path(out_dir).resolve()
    for src in inputs:
        s = Path(str(src)).expanduser()
        if s.exists():
            s = s.resolve()
            if out == s or s in out.parents or out in s.parents:
                raise PoisonlabError(f"output {out} overlaps the input {s}; choose a separate folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PoisonlabError(f"{out} exists and is not empty; choose another folder or pass --overwrite")


@contextlib.contextmanager
def staged_dir(out_dir, overwrite=False):
    """Yield a temporary sibling folder; on success it replaces out_dir in one rename."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if overwrite:
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        else:
            out.rmdir()  # only an empty folder may be replaced without --overwrite
    os.replace(tmp, out)


def save_imagefolder(ds: ImageSet, out_dir, overwrite=False) -> list:
    check_output_dir(out_dir, overwrite)
    with staged_dir(out_dir, overwrite) as tmp:
        return write_pngs(ds, tmp)
