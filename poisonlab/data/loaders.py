"""Load ImageFolder trees (dirs or .tar.gz), CIFAR-10/100 python pickles and MedMNIST-style .npz files.

Every loader returns an ImageSet. Decoding a large tree is slow, so decoded arrays are cached
(keyed by the source's paths, sizes and mtimes) under $POISONLAB_CACHE (default ~/.cache/poisonlab).
"""

import hashlib
import io
import os
import tarfile
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .. import PoisonlabError
from ..fileio import atomic_write
from .imageset import ImageSet
from .names import check_component, check_relpath
from .safepickle import load_cifar_batch

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
BUNDLED = {"cifar10-mini": "cifar10_mini.tar.gz"}


def bundled_path(name: str = "cifar10-mini") -> Path:
    if name not in BUNDLED:
        raise PoisonlabError(f"unknown bundled data set {name!r}; have {sorted(BUNDLED)}")
    return Path(__file__).parent / "bundled" / BUNDLED[name]


def cache_dir() -> Path:
    return Path(os.environ.get("POISONLAB_CACHE", Path.home() / ".cache" / "poisonlab"))


# Image modes. 8-bit gray/colour convert as Pillow does (alpha is dropped; palette, CMYK and YCbCr become
# RGB). 16-bit gray is scaled to 8 bits (round(v * 255 / 65535)), never clipped; 32-bit integer ("I", as
# Pillow opens 16-bit PGM) is taken as 16-bit when it lies in [0, 65535]; float ("F") must lie in [0, 1].
# Everything else is refused. The budget is checked against this converted original.
GRAY8_MODES = {"1", "L", "LA", "La"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
COLOR_MODES = {"P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr"}
GRAY_MODES = GRAY8_MODES | SIXTEEN_BIT_MODES | {"I", "F"}
# Formats whose decoders are plain image parsers (by content, not extension: Pillow would otherwise also
# hand an "x.png" holding PostScript to Ghostscript).
FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF", "PPM")
MAX_PIXELS = int(os.environ.get("POISONLAB_MAX_PIXELS", 50_000_000))  # decompression-bomb guard, per image
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # MAX_PIXELS is stricter


def _class_order(names):
    """Folder names in label order: numerically when all are integers ("0".."10", as save_imagefolder
    writes for unnamed classes), so a written tree reads back with the same labels; else alphabetically."""
    names = sorted(set(names))
    return sorted(names, key=int) if all(n.isdecimal() for n in names) else names


# ---------------------------------------------------------------- decoding single images
def _to_8bit(im, name) -> np.ndarray:
    """uint8 (H,W) or (H,W,3) from any supported mode."""
    mode = im.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        a = np.asarray(im)
        if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            raise PoisonlabError(f"image {name}: 32-bit values outside [0, 65535] have no defined 8-bit scale; "
                                 "convert it to 8 or 16 bits first")
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "F":
        a = np.asarray(im)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise PoisonlabError(f"image {name}: float pixels must lie in [0, 1] (no NaN); convert it to 8 bits first")
        return np.round(a * 255).astype(np.uint8)
    if mode in GRAY8_MODES:
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode in COLOR_MODES:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    raise PoisonlabError(f"image {name}: unsupported image mode {mode!r}; convert it to RGB or grayscale first")


def _decode(data_or_path, name: str, mode: str, resize):
    """mode "auto" keeps a grayscale image single-channel and makes anything else RGB."""
    try:
        with Image.open(data_or_path, formats=FORMATS) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise PoisonlabError(f"image {name} is {w}x{h} = {w * h} pixels, above the limit of {MAX_PIXELS} pixels "
                                     "(decompression-bomb guard; set POISONLAB_MAX_PIXELS to raise it)")
            im.load()
            arr = _to_8bit(im, name)
    except Image.DecompressionBombError as e:  # Pillow's own guard fires first for the very largest
        raise PoisonlabError(f"image {name} is above the limit of {MAX_PIXELS} pixels (decompression-bomb guard; "
                             f"set POISONLAB_MAX_PIXELS to raise it): {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise PoisonlabError(f"cannot decode image {name}: {e}") from None
    gray = arr.ndim == 2 if mode == "auto" else mode == "L"
    if gray != (arr.ndim == 2) or (resize is not None and arr.shape[:2] != tuple(resize)):
        im = Image.fromarray(arr).convert("L" if gray else "RGB")
        if resize is not None and im.size != (resize[1], resize[0]):
            im = im.resize((resize[1], resize[0]), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _stack(arrays, names, resize):
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(n for a, n in zip(arrays, names) if a.shape != first)
        raise PoisonlabError(
            f"images differ in size: {names[0]} is {first[1]}x{first[2]} but {odd} is "
            f"{next(a.shape for a in arrays if a.shape != first)[1]}x{next(a.shape for a in arrays if a.shape != first)[2]}; "
            "pass --resize HxW to resize all images")
    return np.stack(arrays)


def _decode_many(items, mode, resize):
    """items: list of (source, name) where source is a path or bytes. Returns uint8 (N,C,H,W).

    mode "auto": grayscale only if every image is single-channel; otherwise all RGB (palette/RGBA become
    RGB, and gray images are replicated to 3 channels, exactly as PIL's L->RGB conversion does).
    """
    def one(item):
        src, name = item
        return _decode(io.BytesIO(src) if isinstance(src, bytes) else src, name, mode, resize)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        arrays = list(pool.map(one, items, chunksize=256))
    if any(a.shape[0] == 3 for a in arrays):
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    return _stack(arrays, [n for _, n in items], resize)


def _imagefolder_entries(root: Path):
    """Sorted [(class, [file paths])] of an ImageFolder directory."""
    if not root.is_dir():
        raise PoisonlabError(f"data folder not found: {root}")
    classes = _class_order(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for c in classes:
        check_component(c, f"class folder in {root}")
    if not classes:
        raise PoisonlabError(f"{root} has no class sub-folders (expected ImageFolder layout root/<class>/<image>)")
    out = []
    for c in classes:
        files = sorted(p for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                       and not any(part.startswith(".") for part in p.relative_to(root / c).parts))
        if not files:
            raise PoisonlabError(f"class folder {root / c} has no images")
        check_files(root, files, linked=(root / c).is_symlink())
        out.append((c, files))
    return out


def check_files(root: Path, files, linked=False):
    """Image files found under root: plain relative names, and links read only if they stay inside root
    (a tree unpacked from elsewhere must not pull in, and publish, files from the rest of the disk)."""
    real_root = root.resolve()
    for p in files:
        check_relpath(p.relative_to(root).as_posix(), f"image file in {root}")
        if linked or p.is_symlink():
            target = p.resolve()
            if real_root not in target.parents:
                raise PoisonlabError(f"image file {p} is a link to {target}, outside the data folder {root}; "
                                     "refusing to read it")


def _from_arrays(images, labels, classes, names=None):
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.as_tensor(np.asarray(labels).reshape(-1), dtype=torch.int64), list(classes), names)


def _cached(key_parts, build):
    """Return build() through an on-disk npz cache keyed by key_parts."""
    key = hashlib.sha256(repr(key_parts).encode()).hexdigest()[:24]
    path = cache_dir() / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                # str(): numpy hands back np.str_, which would differ in repr from a fresh build's str
                names = [str(n) for n in z["names"]] if "names" in z else None
                return _from_arrays(z["images"], z["labels"], [str(c) for c in z["classes"]], names)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache entry is rebuilt
    ds = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            # names=None would be saved as a pickled object array that the allow_pickle=False load rejects
            extra = {} if ds.names is None else {"names": np.array(ds.names, dtype=str)}
            np.savez(f, images=ds.images.numpy(), labels=ds.labels.numpy(),
                     classes=np.array(ds.classes, dtype=str), **extra)
    except OSError:
        pass  # caching is an optimisation; a read-only home is fine
    return ds


def load_imagefolder(root, mode="auto", resize=None) -> ImageSet:
    root = Path(root)
    entries = _imagefolder_entries(root)
    stats = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for _, fs in entries for p in fs]
    def build():
        items, labels, names = [], [], []
        for k, (_, files) in enumerate(entries):
            for p in files:
                items.append((p, p.relative_to(root).as_posix()))
                labels.append(k)
                names.append(p.relative_to(root).as_posix())
        return _from_arrays(_decode_many(items, mode, resize), labels, [c for c, _ in entries], names)
    if len(stats) < 2000:
        return build()
    return _cached(("folder", str(root.resolve()), stats, mode, resize), build)


def load_tar(path, split, mode="auto", resize=None) -> ImageSet:
    """An ImageFolder tree inside a tar archive, e.g. train/<class>/<img> (optionally under one top folder)."""
    path = Path(path)
    st = path.stat()
    def build():
        members = {}
        try:
            with tarfile.open(path) as tar:
                for m in tar:
                    parts = m.name.replace("\\", "/").split("/")
                    if split not in parts or Path(m.name).suffix.lower() not in IMAGE_EXTS:
                        continue
                    # Member names are untrusted: an absolute name, "..", or a link (which points at
                    # anything) is refused outright rather than skipped, so a hostile archive is noticed.
                    if m.name.startswith(("/", "\\")) or ".." in parts:
                        raise PoisonlabError(f"archive {path}: member {m.name!r} points outside the archive "
                                             "(absolute path or '..'); refusing it")
                    if m.issym() or m.islnk():
                        raise PoisonlabError(f"archive {path}: member {m.name!r} is a link to {m.linkname!r}; "
                                             "only regular files are read")
                    parts = [p for p in parts if p not in ("", ".")]
                    # hidden entries (e.g. macOS "._x.jpg" resource forks) are not images, as in folders
                    if not m.isfile() or any(p.startswith(".") for p in parts):
                        continue
                    i = parts.index(split)
                    if len(parts) - i < 3:
                        continue
                    name = check_relpath("/".join(parts[i + 1:]), f"archive {path} member")
                    members[name] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise PoisonlabError(f"cannot read archive {path}: {e}") from None
        if not members:
            raise PoisonlabError(f"archive {path} has no '{split}/<class>/<image>' entries")
        names = sorted(members)
        classes = _class_order(n.split("/")[0] for n in names)
        items = [(members[n], f"{path}:{split}/{n}") for n in names]
        labels = [classes.index(n.split("/")[0]) for n in names]
        return _from_arrays(_decode_many(items, mode, resize), labels, classes, names)
    return _cached(("tar", str(path.resolve()), st.st_size, st.st_mtime_ns, split, mode, resize), build)


def _resize_array(x: np.ndarray, resize) -> np.ndarray:
    """Resize a uint8 NCHW array batch-wise (bilinear, antialiased) for the array-based formats."""
    if resize is None or tuple(x.shape[2:]) == tuple(resize):
        return x
    t = torch.nn.functional.interpolate(torch.from_numpy(x).float(), size=tuple(resize), mode="bilinear",
                                        antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


def load_npz(path, split, mode="auto", resize=None) -> ImageSet:
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise PoisonlabError(f"cannot read {path}: {e}") from None
    with z:
        key = f"{split}_images"
        if key not in z:
            raise PoisonlabError(f"{path} has no '{key}' array (has {sorted(z.files)})")
        if f"{split}_labels" not in z:
            raise PoisonlabError(f"{path} has '{key}' but no '{split}_labels' array")
        try:  # arrays load lazily: an object (pickled) array fails here, under allow_pickle=False
            x = z[key]
            y = z[f"{split}_labels"]
            classes = z["classes"] if "classes" in z else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise PoisonlabError(f"cannot read {path}: {e}") from None
        except MemoryError as e:  # a header may claim any shape; numpy allocates before it reads
            raise PoisonlabError(f"cannot read {path}: an array is too large to load ({e})") from None
    x, z_shape = _checked_pixels(x, f"{path}:{key}"), x.shape
    if classes is not None:
        if classes.dtype.kind not in "US" or classes.ndim != 1:
            raise PoisonlabError(f"{path}: 'classes' must be a 1-D array of names, got {classes.dtype} {classes.shape}")
        classes = [check_component(c.decode() if isinstance(c, bytes) else str(c), f"{path}: class name")
                   for c in classes.tolist()]
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise PoisonlabError(f"{path}:{key} must be (N,H,W), (N,C,H,W) or (N,H,W,C) with 1 or 3 channels, "
                             f"got shape {z_shape}")
    if not len(x):
        raise PoisonlabError(f"{path}:{key} holds no images")
    y = _checked_labels(y, len(x), classes, f"{path}:{split}_labels")
    if mode == "RGB" and x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    elif mode == "L" and x.shape[1] == 3:
        x = np.round(0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None].astype(np.uint8)
    x = _resize_array(x, resize)
    classes = classes or [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
    names = [f"{classes[int(l)]}/{i:06d}.png" for i, l in enumerate(y)]
    return _from_arrays(x, y, classes, names)


MAX_CLASSES = 100_000  # without class names, labels up to this many classes are accepted


def _checked_pixels(x: np.ndarray, what: str) -> np.ndarray:
    """uint8 pixels from an array: integers must lie in [0, 255], floats in [0, 1] without NaN/inf.
    Nothing is clipped: an out-of-range array is refused, not silently changed."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise PoisonlabError(f"{what}: integer pixels must lie in [0, 255], got [{x.min()}, {x.max()}]")
        return x.astype(np.uint8)
    if x.dtype.kind == "f":
        if x.size and not np.isfinite(x).all():
            raise PoisonlabError(f"{what}: float pixels contain NaN or infinity")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise PoisonlabError(f"{what}: float pixels must lie in [0, 1], got [{x.min():g}, {x.max():g}]")
        return np.round(x * 255).astype(np.uint8)
    raise PoisonlabError(f"{what}: pixels must be integers or floats, got dtype {x.dtype}")


def _checked_labels(y, n: int, classes, what: str) -> np.ndarray:
    """int64 labels (N,) or (N,1), each in [0, len(classes)) (or [0, MAX_CLASSES) without names)."""
    y = np.asarray(y)
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all()):
        raise PoisonlabError(f"{what}: labels must be whole numbers, got dtype {y.dtype}")
    if y.size != n or (y.ndim > 1 and y.shape[1:] != (1,) * (y.ndim - 1)):
        raise PoisonlabError(f"{what}: need one label per image ({n}), got shape {y.shape}")
    y = y.reshape(-1).astype(np.int64)
    k = len(classes) if classes is not None else MAX_CLASSES
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise PoisonlabError(f"{what}: labels must lie in [0, {k}), got [{y.min()}, {y.max()}]")
    return y


def load_cifar_pickles(root, split, resize=None) -> ImageSet:
    root = Path(root)
    if (root / "data_batch_1").exists():  # CIFAR-10
        files = [root / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [root / "test_batch"]
        meta, label_key, name_key = root / "batches.meta", b"labels", b"label_names"
    else:  # CIFAR-100
        files = [root / split]
        meta, label_key, name_key = root / "meta", b"fine_labels", b"fine_label_names"
    classes = None
    if meta.exists():
        names = load_cifar_batch(meta).get(name_key)
        if not isinstance(names, list) or not all(isinstance(c, (bytes, str)) for c in names):
            raise PoisonlabError(f"CIFAR meta {meta}: {name_key.decode()} must be a list of names")
        classes = [check_component(c.decode("utf-8", "replace") if isinstance(c, bytes) else c,
                                   f"CIFAR meta {meta}: class name") for c in names]
    xs, ys = [], []
    for f in files:
        d = load_cifar_batch(f)
        data = d.get(b"data")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise PoisonlabError(f"CIFAR batch {f}: 'data' must be a uint8 array of shape (N, 3072)")
        xs.append(data.reshape(-1, 3, 32, 32))
        labels = d.get(label_key)
        if not isinstance(labels, (list, np.ndarray)):
            raise PoisonlabError(f"CIFAR batch {f}: no {label_key.decode()!r} list")
        ys.append(_checked_labels(labels, len(data), classes, f"CIFAR batch {f}"))
    y = np.concatenate(ys)
    if not len(y):
        raise PoisonlabError(f"CIFAR batches in {root} hold no images")
    classes = classes or [str(i) for i in range(int(y.max()) + 1)]
    names = [f"{classes[int(l)]}/{i:06d}.png" for i, l in enumerate(y)]
    return _from_arrays(_resize_array(np.concatenate(xs), resize), y, classes, names)


def _is_tarfile(p: Path) -> bool:
    try:
        return tarfile.is_tarfile(p)
    except (tarfile.TarError, OSError, EOFError) as e:  # e.g. a truncated .tar.gz
        raise PoisonlabError(f"cannot read archive {p}: {e}") from None


def _is_cifar_pickles(p: Path) -> bool:
    return (p / "data_batch_1").exists() or ((p / "train").is_file() and (p / "test").is_file())


def load_dataset(source, split="train", mode="auto", resize=None) -> ImageSet:
    """Load one split of a data set from a folder, archive, .npz, CIFAR pickle folder or 'bundled[:name]'."""
    if isinstance(resize, str):
        resize = parse_size(resize)
    src = str(source)
    if src == "bundled" or src.startswith("bundled:"):
        name = src.split(":", 1)[1] if ":" in src else "cifar10-mini"
        return load_tar(bundled_path(name), split, mode, resize)
    p = Path(src).expanduser()
    if not p.exists():
        raise PoisonlabError(f"data not found: {p}")
    if p.is_file():
        if p.suffix == ".npz":
            return load_npz(p, split, mode, resize)
        if _is_tarfile(p):
            return load_tar(p, split, mode, resize)
        raise PoisonlabError(f"{p}: unsupported file; give a folder, .npz or .tar(.gz)")
    if _is_cifar_pickles(p):
        return load_cifar_pickles(p, split, resize)
    if (p / split).is_dir():
        return load_imagefolder(p / split, mode, resize)
    if split == "train" and not (p / "test").is_dir():
        from .unlabelled import is_flat_folder, load_unlabelled  # unlabelled photos, for label-free methods
        if is_flat_folder(p):
            return load_unlabelled(p, mode, resize)
        return load_imagefolder(p, mode, resize)  # a bare ImageFolder tree is a training set
    raise PoisonlabError(f"{p} has no '{split}' split")


def load_splits(source, test_source=None, mode="auto", resize=None):
    """(train, test) for a source; test is None when neither the source nor test_source has one."""
    train = load_dataset(source, "train", mode, resize)
    if test_source is not None:
        test = load_dataset(test_source, "test" if _has_split(test_source, "test") else "train", mode, resize)
    else:
        test = load_dataset(source, "test", mode, resize) if _has_split(source, "test") else None
    if test is not None and test.shape != train.shape:
        raise PoisonlabError(f"test images {test.shape} do not match training images {train.shape}")
    # Labels are indices into the class lists: differing lists would score every prediction against
    # the wrong class. A test set may lack trailing classes, nothing else.
    if test is not None and test.classes != train.classes[:len(test.classes)]:
        raise PoisonlabError(f"test classes {test.classes} do not match training classes {train.classes}")
    return train, test


def _has_split(source, split) -> bool:
    src = str(source)
    if src.startswith("bundled"):
        return True
    p = Path(src)
    if p.is_file() and p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                return f"{split}_images" in z
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return True  # unreadable: load_npz reports it as one clear error
    if p.is_file():
        return True  # archives carry their splits; load_tar errors clearly if one is missing
    return (p / split).is_dir() or _is_cifar_pickles(p)


def parse_size(text):
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
        assert h > 0 and w > 0
    except (ValueError, AssertionError):
        raise PoisonlabError(f"--resize: write HxW, e.g. 32x32 (got {text!r})") from None
    return (h, w)
