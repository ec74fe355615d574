"""Label-free input: a flat folder of images (no class sub-folders), e.g. a data owner's unlabelled photos.

load_dataset reads such a folder through load_unlabelled: the images load as one class named "unlabelled"
with their file names kept, so a protected copy is written flat again (OUT/<name>.png) and reads back the
same way. Only methods that declare `needs_labels = False` (e.g. unlearnable_clusters) accept such a set;
Protection.run refuses it for the others.
"""

from pathlib import Path

from .. import PoisonlabError
from .imageset import ImageSet
from .loaders import IMAGE_EXTS, _cached, _decode_many, _from_arrays, check_files

UNLABELLED = "unlabelled"


def _images_in(root: Path):
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not p.name.startswith("."))


def is_flat_folder(source) -> bool:
    """A folder holding image files directly and no (visible) sub-folders."""
    p = Path(str(source)).expanduser()
    if not p.is_dir():
        return False
    subdirs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return not subdirs and bool(_images_in(p))


def is_unlabelled(ds: ImageSet) -> bool:
    return ds.classes == [UNLABELLED]


def load_unlabelled(root, mode="auto", resize=None) -> ImageSet:
    """Every image of a flat folder, sorted by name, under the single class 'unlabelled'."""
    root = Path(root).expanduser()
    if not is_flat_folder(root):
        raise PoisonlabError(f"{root} is not a flat folder of images (expected root/<image>, no sub-folders)")
    files = _images_in(root)
    check_files(root, files)
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]

    def build():
        arrays = _decode_many([(p, p.name) for p in files], mode, resize)
        return _from_arrays(arrays, [0] * len(files), [UNLABELLED], [p.name for p in files])
    if len(files) < 2000:
        return build()
    return _cached(("flat", str(root.resolve()), stats, mode, resize), build)
