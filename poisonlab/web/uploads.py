"""Turn an upload (image files, or one zip) into an ImageFolder tree, safely.

Untrusted by construction: member names are reduced to plain path components (no absolute paths, no '..',
no drive letters, no hidden files), contents are written by us as regular files (a symlink member is
refused, never created), every size is capped while reading (the header's sizes are not trusted),
compression ratios and counts are capped (zip bombs), and every image's pixel count is read from its header
before anything decodes it (pixel bombs).
"""

import io
import stat
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from .. import PoisonlabError
from ..data.loaders import IMAGE_EXTS
from .limits import Limits

SINGLE_CLASS = "images"  # the one folder label-free uploads go into


@dataclass
class Extracted:
    images: int
    classes: list
    labelled: bool   # True when the upload had two or more class folders


def clean_parts(name: str):
    """Path components of an uploaded name, or None for names to ignore (hidden files, macOS forks).
    Raises on names that try to leave the folder."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/"))
    if "\x00" in name:
        raise PoisonlabError(f"file name with a NUL byte: {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or (p.parts and p.parts[0].endswith(":")) or ".." in p.parts:
        raise PoisonlabError(f"unsafe path in upload: {name!r} (absolute or with '..')")
    parts = [c for c in p.parts if c not in ("", ".")]
    if not parts or any(c.startswith(".") or c == "__MACOSX" for c in parts):
        return None
    if any(len(c.encode()) > 200 for c in parts) or len(parts) > 16:
        raise PoisonlabError(f"file name too long or too deep: {name[:80]!r}")
    return parts


def _layout(paths):
    """Map cleaned component lists to (class, relative name). A shared top folder is dropped; loose files
    go into one class (label-free); class folders give labels."""
    paths = [list(p) for p in paths]
    while all(len(p) >= 3 for p in paths) and len({p[0] for p in paths}) == 1:
        paths = [p[1:] for p in paths]
    depths = {len(p) >= 2 for p in paths}
    if depths == {True, False}:
        raise PoisonlabError("the upload mixes loose images with class folders; use one layout: "
                             "class folders (class/image.png) or only images")
    if depths == {False}:
        return [(SINGLE_CLASS, p[0]) for p in paths]
    return [(p[0], "/".join(p[1:])) for p in paths]


def check_image(data: bytes, name: str, limits: Limits):
    """Header-only check: a decodable image format within the pixel limit (nothing is decoded here)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > limits.max_pixels:
                raise PoisonlabError(f"{name}: {w}x{h} pixels is more than the limit of {limits.max_pixels:,}")
            im.verify()
    except PoisonlabError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise PoisonlabError(f"{name} is not a readable image ({e})") from None


def zip_members(data, limits: Limits):
    """Yield (name, bytes) of the image members of a zip, enforcing the limits while reading."""
    try:
        zf = zipfile.ZipFile(data)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise PoisonlabError(f"the zip file cannot be read ({e})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > 4 * limits.max_files:
            raise PoisonlabError(f"the zip holds {len(infos)} entries; the limit is {limits.max_files} images")
        total = 0
        for info in infos:
            if info.is_dir():
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                raise PoisonlabError(f"the zip holds a symbolic link ({info.filename!r}); links are not accepted")
            parts = clean_parts(info.filename)
            if parts is None or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTS:
                continue
            if info.file_size > limits.max_file_bytes:
                raise PoisonlabError(f"{info.filename!r} is larger than {limits.max_file_bytes:,} bytes")
            if info.file_size > limits.max_ratio * max(info.compress_size, 1) + 65536:
                raise PoisonlabError(f"{info.filename!r} unpacks to {info.file_size:,} bytes from "
                                     f"{info.compress_size:,}: too compressed to be an image (a possible zip bomb)")
            try:
                with zf.open(info) as f:
                    content = f.read(limits.max_file_bytes + 1)  # headers can lie: cap what is actually read
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as e:
                raise PoisonlabError(f"cannot unpack {info.filename!r} ({e})") from None
            if len(content) > limits.max_file_bytes:
                raise PoisonlabError(f"{info.filename!r} is larger than {limits.max_file_bytes:,} bytes")
            total += len(content)
            if total > limits.max_total_bytes:
                raise PoisonlabError(f"the zip unpacks to more than {limits.max_total_bytes:,} bytes of images")
            yield info.filename, content


def extract_upload(files, dest, limits: Limits = Limits()) -> Extracted:
    """files: [(name, fileobj)] as uploaded: one .zip, or image files (names may carry folders, as a dropped
    folder gives them). Writes dest/<class>/<name> and returns what it found."""
    dest = Path(dest)
    if not files:
        raise PoisonlabError("no files were uploaded")
    zips = [f for f in files if f[0].lower().endswith(".zip")]
    members = []
    if zips:
        if len(files) > 1:
            raise PoisonlabError("upload either one zip file or image files, not both")
        members = list(zip_members(zips[0][1], limits))
    else:
        if len(files) > limits.max_files:
            raise PoisonlabError(f"{len(files)} files; the limit is {limits.max_files}")
        total = 0
        for name, f in files:
            content = f.read(limits.max_file_bytes + 1)
            if len(content) > limits.max_file_bytes:
                raise PoisonlabError(f"{name!r} is larger than {limits.max_file_bytes:,} bytes")
            total += len(content)
            if total > limits.max_total_bytes:
                raise PoisonlabError(f"the upload holds more than {limits.max_total_bytes:,} bytes")
            members.append((name, content))
    kept = []
    for name, content in members:
        parts = clean_parts(name)
        if parts is None:
            continue
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTS:
            raise PoisonlabError(f"{name!r} is not an image file (accepted: {', '.join(sorted(IMAGE_EXTS))}, or one .zip)")
        kept.append((parts, name, content))
    if not kept:
        raise PoisonlabError("the upload holds no images (accepted: " + ", ".join(sorted(IMAGE_EXTS)) + ", or one .zip)")
    if len(kept) > limits.max_files:
        raise PoisonlabError(f"{len(kept)} images; the limit is {limits.max_files}")
    placed = _layout([p for p, _, _ in kept])
    seen = set()
    root = dest.resolve()
    for (cls, rel), (_, name, content) in zip(placed, kept):
        check_image(content, name, limits)
        target = (dest / cls / rel)
        key = str(PurePosixPath(cls, rel).with_suffix("")).lower()
        if key in seen:
            raise PoisonlabError(f"two images would have the same name: {cls}/{rel} (e.g. a.jpg and a.png)")
        seen.add(key)
        if root not in target.resolve().parents:
            raise PoisonlabError(f"unsafe path in upload: {name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as out:
            out.write(content)
    classes = sorted({c for c, _ in placed})
    return Extracted(images=len(placed), classes=classes, labelled=len(classes) >= 2)
