"""CUDA: class-wise random blur filters from a private key (model-free).

Sadasivan, Soltanolkotabi & Feizi, "CUDA: Convolution-based Unlearnable Datasets", CVPR 2023
(arXiv:2303.04278). Every image of class k is convolved with a filter H_k that is drawn at random from a
private key; a network then learns the link between blur filter and label instead of the image content.
Written from the paper's description (the official code is not used).

Filters (one k x k filter per class and channel, applied depthwise):
    every tap ~ U(0, blur), one randomly placed tap set to 1, then the filter is divided by its sum.
The unit tap keeps the image recognisable; `blur` (the paper's blur parameter p_b) sets how much weight
the neighbours get next to it, so it is meaningful after the normalisation. Normalised non-negative taps
make every output pixel a convex combination of its input neighbourhood, so the result is already in
[0, 1] (borders use replicate padding) and no clipping is needed.

Paper defaults: kernel 3 and blur 0.3 for CIFAR-size images; kernel 9 and blur 0.06 for ImageNet-size
images (pass kernel_size=9, blur=0.06).

The key is the secret: with it (and the clean data) anyone can re-create the protected set, so it is never
written into OUT. Give it as `key` (a string of >= 16 characters) or `key_file` (read if it exists,
otherwise a fresh key is generated and written there, mode 0600); with neither, a key is generated and
written beside OUT as OUT.cuda-key. One rule for both: surrounding whitespace is not part of the key. A key file inside OUT is refused. The manifest records only whether a
key was given, read from a file, or generated. Same key + same data => identical output.
"""

import hashlib
import os
import secrets as _secrets
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import PoisonlabError
from ..registry import METHODS
from ..runtime import pick_device
from .base import Protection

MIN_KEY_CHARS = 16
KEY_SUFFIX = ".cuda-key"


def generate_key() -> str:
    """A fresh 128-bit key. The prefix keeps it a string (never parsed as a number by the CLI)."""
    return "cuda-" + _secrets.token_hex(16)


def clean_key(text, what: str) -> str:
    """The one rule for a key, given or read from a file: surrounding whitespace (a file's newline, a
    quoted " key ") is not part of it, and what remains must have MIN_KEY_CHARS characters."""
    key = str(text).strip()
    if len(key) < MIN_KEY_CHARS:
        raise PoisonlabError(f"cuda: {what} must hold at least {MIN_KEY_CHARS} characters besides surrounding "
                             "whitespace (leave the key out to have a random one generated)")
    return key


def class_filters(key: str, num_classes: int, channels: int, kernel_size: int, blur: float,
                  grayscale: bool = False) -> torch.Tensor:
    """The key's filters, float64 (num_classes, channels, k, k): taps >= 0, each (class, channel) sums to 1."""
    seed = int.from_bytes(hashlib.sha256(("poisonlab-cuda:" + key).encode()).digest(), "big")
    rng = np.random.default_rng(seed)  # PCG64 with all 256 bits of the hash as entropy; stable across platforms
    c = 1 if grayscale else channels
    w = rng.uniform(0.0, blur, size=(num_classes, c, kernel_size * kernel_size))
    peak = rng.integers(0, kernel_size * kernel_size, size=(num_classes, c))
    np.put_along_axis(w, peak[..., None], 1.0, axis=2)
    w = w.reshape(num_classes, c, kernel_size, kernel_size)
    if grayscale:
        w = np.repeat(w, channels, axis=1)
    w = w / w.sum(axis=(2, 3), keepdims=True)
    return torch.from_numpy(w)


def apply_filters(images: torch.Tensor, labels: torch.Tensor, filters: torch.Tensor, device, batch=512) -> torch.Tensor:
    """Depthwise-convolve each uint8 image with its class's filters; returns uint8 on the CPU."""
    n, c, h, w = images.shape
    k = filters.shape[-1]
    pad = ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2)  # left, right, top, bottom ("same" output size)
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    filt = filters.to(device, dtype)
    out = torch.empty_like(images)
    for i in range(0, n, batch):
        x = images[i:i + batch].to(device, dtype).div_(255)
        b = len(x)
        wgt = filt[labels[i:i + batch].to(device)].reshape(b * c, 1, k, k)
        xp = F.pad(x.reshape(1, b * c, h, w), pad, mode="replicate")
        y = F.conv2d(xp, wgt, groups=b * c).reshape(b, c, h, w)
        out[i:i + batch] = y.mul_(255).round_().clamp_(0, 255).to("cpu", torch.uint8)
    return out


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


@METHODS.register
class CUDA(Protection):
    """CUDA (Sadasivan et al. CVPR 2023): class-wise random blur filters from a private key."""

    name = "cuda"
    norm = "none"

    def __init__(self, kernel_size=3, blur=0.3, key=None, key_file=None, grayscale=False, seed=0,
                 device="auto", eps=None):
        if eps is not None:
            raise PoisonlabError("cuda blurs images with class-wise filters; it has no additive noise budget (eps). "
                                 "Set kernel_size and blur instead")
        self.kernel_size, self.blur, self.grayscale = int(kernel_size), float(blur), bool(grayscale)
        if self.kernel_size < 2:
            raise PoisonlabError(f"cuda: kernel_size must be >= 2, got {kernel_size}")
        if not 0 < self.blur <= 1:
            raise PoisonlabError(f"cuda: blur must lie in (0, 1], got {blur}")
        if key is not None and key_file is not None:
            raise PoisonlabError("cuda: give key or key_file, not both")
        self._key = None if key is None else clean_key(key, "a key")
        self._key_file = Path(key_file).expanduser() if key_file is not None else None
        self.key_source = "given" if key is not None else None
        self.key_path = None  # where the key was read from or written to (never recorded in the manifest)
        self.eps, self.seed, self.device = None, int(seed), device
        self._labels = None

    @property
    def min_side(self):
        # on a smaller image the filter sees mostly replicated border: the output would be (near) the original
        return self.kernel_size

    def params(self) -> dict:
        return {"kernel_size": self.kernel_size, "blur": self.blur, "grayscale": self.grayscale,
                "key": "private (not recorded)", "key_file_given": self._key_file is not None,
                "seed": self.seed, "device": self.device}

    def bound(self) -> dict:
        return {"norm": "none", "eps": None,
                "eps_text": f"class-wise blur, kernel {self.kernel_size}, blur {self.blur:g}",
                "transform": "class-wise depthwise convolution with key-generated filters",
                "kernel_size": self.kernel_size, "blur": self.blur,
                "filters": "per class and channel: taps U(0, blur), one tap 1, normalised to sum 1 (non-negative)",
                "promise": "each saved pixel equals the keyed filter output of the original (within 1 level of "
                           "rounding): a convex combination of its kernel_size x kernel_size neighbourhood",
                "key_source": self.key_source}

    def secrets(self) -> dict:
        return {"key": self._key}

    # ------------------------------------------------------------------ key handling
    def _forbidden_dirs(self):
        out = getattr(self, "out_dir", None)
        if out is None:
            return []
        out = Path(out).expanduser().resolve()
        return [out, out.with_name(f".{out.name}.work"), out.with_name(f".{out.name}.partial")]

    def _check_key_path(self, path: Path):
        p = path.resolve()
        for d in self._forbidden_dirs():
            if _inside(p, d):
                raise PoisonlabError(f"cuda: refusing to keep the key file {path} inside the output {d}: "
                                     "the key must stay private; put it outside OUT")

    def resolve_key(self) -> str:
        """The key: given, read from key_file, or generated (and written to key_file / beside OUT)."""
        if self._key is not None:
            if self._key_file is not None:
                self._check_key_path(self._key_file)
            return self._key
        path = self._key_file
        if path is None and getattr(self, "out_dir", None) is not None:
            out = Path(self.out_dir).expanduser()
            path = out.with_name(out.name + KEY_SUFFIX)
        if path is not None:
            self._check_key_path(path)
            if path.exists():
                text = clean_key(path.read_text(), f"key file {path}")
                self._key, self.key_source, self.key_path = text, "file", path
                return self._key
        self._key = generate_key()
        self.key_source = "generated"
        if path is not None:
            _write_private(path, self._key + "\n")
            self.key_path = path
            if getattr(self, "progress", True):
                print(f"cuda: generated a new key and wrote it to {path} -- keep it private (it is not in the output)",
                      file=sys.stderr)
        return self._key

    # ------------------------------------------------------------------ generation
    def filters(self, num_classes: int, channels: int) -> torch.Tensor:
        return class_filters(self.resolve_key(), num_classes, channels, self.kernel_size, self.blur, self.grayscale)

    def generate(self, data, ckpt):
        self._labels = data.labels.clone()
        self._num_classes = data.num_classes
        self._device = pick_device(self.device)
        f = self.filters(data.num_classes, data.shape[0])
        return apply_filters(data.images, data.labels, f, self._device)

    def verify(self, original, protected):
        if protected.dtype != torch.uint8 or protected.shape != original.shape:
            raise PoisonlabError(f"cuda: output {protected.dtype} {tuple(protected.shape)} does not match the input "
                                 f"{original.dtype} {tuple(original.shape)}")
        if self._labels is None or len(self._labels) != len(original):
            raise PoisonlabError("cuda: verify needs the labels of the images generate() protected")
        expected = apply_filters(original, self._labels, self.filters(self._num_classes, original.shape[1]),
                                 self._device)
        worst = int((expected.to(torch.int16) - protected.to(torch.int16)).abs().max()) if len(original) else 0
        if worst > 1:
            raise PoisonlabError(f"cuda: a saved pixel differs by {worst} levels from the keyed filter output")


def _write_private(path: Path, text: str):
    """Write a key file readable by its owner only, atomically; never overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if path appeared meanwhile: never clobber a key
        except FileExistsError:
            raise PoisonlabError(f"cuda: key file {path} appeared while writing it; rerun to use it") from None
    finally:
        os.unlink(tmp)
