"""Secret keys of a marked data set and the private key file that holds them.

Data Taggants (Bouaziz et al. 2024) sign a data set with K secret (key image, key label) pairs: the images
are out of distribution (random noise drawn at low resolution and resized, as in the paper) and the labels are drawn
uniformly at random, independently of everything else. That independence is what makes the verification
exact: for a model that never saw the marked data, whatever it answers on a key image, the chance that
the key label is among its top-k answers is exactly k / num_classes.

A backdoor watermark (DVBW, Li et al. 2022) keeps a trigger (pattern and per-pixel blend weight, as
poisonlab.attacks.backdoor makes them), the target class and the benign images the paired t-test is run on.

The key file is a NumPy .npz written without pickle (np.load(..., allow_pickle=False) reads it back,
so loading a foreign file cannot run code), created with mode 0600, and refused inside the published
folder. Layout: uint8/int64 arrays plus one JSON string `meta` (method, class names, test settings).
"""

import json
import math
import os
import secrets as _secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import PoisonlabError

FORMAT = "poisonlab-ownership-key/1"
KEY_KINDS = ("grating", "pattern", "uniform")
_ARRAYS = ("images", "labels", "reference", "trigger", "alpha", "verify_images", "verify_labels")


def fresh_seed() -> int:
    """An unpredictable 63-bit seed: the null guarantee needs labels the suspect cannot anticipate."""
    return _secrets.randbits(63)


def make_key_images(n: int, shape, *, kind: str = "pattern", gen: torch.Generator) -> torch.Tensor:
    """n out-of-distribution uint8 images (n, C, H, W).

    grating: a sinusoidal grating between two random colours, random orientation, frequency (1.5 to 8
    periods) and phase: synthetic, far from natural images, and distinct from one another to a network.
    pattern: uniform noise drawn at a quarter of the resolution and resized bilinearly, as the paper's keys
    (64x64 noise resized to 224x224). uniform: i.i.d. uniform pixels at full resolution.
    Measured on a smallcnn trained on 2,000 CIFAR-10 images (bench/ownership.py --stage keys): the mean
    cosine between the penultimate features of two keys is 0.44 (grating), 0.93 (pattern), 0.99 (uniform);
    keys a network cannot tell apart compete for one answer, so only a few of them can carry their label.
    """
    c, h, w = shape
    if kind == "grating":
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        theta = torch.rand(n, generator=gen) * math.pi
        cycles = 1.5 + torch.rand(n, generator=gen) * 6.5  # 1.5 to 8 periods across the image
        phase = torch.rand(n, generator=gen) * 2 * math.pi
        freq = (2 * math.pi * cycles / max(h, w)).view(n, 1, 1)
        wave = torch.sin(freq * (xx * theta.cos().view(n, 1, 1) + yy * theta.sin().view(n, 1, 1)) + phase.view(n, 1, 1))
        c1, c2 = torch.rand(n, c, 1, 1, generator=gen), torch.rand(n, c, 1, 1, generator=gen)
        img = c1 + (c2 - c1) * (wave.unsqueeze(1) * 0.5 + 0.5)
        return img.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    if kind == "uniform":
        return torch.randint(0, 256, (n, c, h, w), generator=gen, dtype=torch.uint8)
    if kind == "pattern":
        low = torch.rand((n, c, max(2, h // 4), max(2, w // 4)), generator=gen)
        up = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        return up.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    raise PoisonlabError(f"unknown key kind {kind!r}; choose from {', '.join(KEY_KINDS)}")


def make_keys(n_keys: int, shape, num_classes: int, *, kind: str = "pattern", seed: int | None = None):
    """(images uint8 (K,C,H,W), labels int64 (K,)) with labels uniform over the classes.

    seed=None draws an unpredictable seed (what a real owner should do); a fixed seed is for experiments."""
    if n_keys < 1:
        raise PoisonlabError(f"n_keys must be >= 1, got {n_keys}")
    if num_classes < 2:
        raise PoisonlabError(f"need at least 2 classes, got {num_classes}")
    gen = torch.Generator().manual_seed(fresh_seed() if seed is None else int(seed))
    images = make_key_images(n_keys, shape, kind=kind, gen=gen)
    labels = torch.randint(0, num_classes, (n_keys,), generator=gen)
    return images, labels


@dataclass
class OwnershipKey:
    """What a data owner keeps private to verify a suspect model later.

    method: "taggants" or "backdoor". taggants: images/labels are the key pairs, top_k the test's k,
    reference (optional, float (K, C)) the log-probabilities the owner's clean surrogate(s) give the key images
    (the baseline of the reference rank-sum test; computed before the labels could influence any model).
    backdoor: trigger pattern (float C,H,W in [0,1]) and alpha (float 1,H,W in [0,1]: the blend weight per
    pixel), trigger_kind, target class, margin tau of the t-test, verify_images/verify_labels the benign
    images (none of the target class) the test compares with their triggered copies.
    """

    method: str
    num_classes: int
    image_shape: tuple
    classes: list = field(default_factory=list)
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    top_k: int = 1
    reference: torch.Tensor | None = None
    trigger: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    trigger_kind: str = "patch"
    target: int | None = None
    margin: float = 0.2
    verify_images: torch.Tensor | None = None
    verify_labels: torch.Tensor | None = None
    params: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def __post_init__(self):
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if self.method not in ("taggants", "backdoor"):
            raise PoisonlabError(f"key file: unknown method {self.method!r}")
        if len(self.image_shape) != 3 or self.image_shape[0] not in (1, 3):
            raise PoisonlabError(f"key file: bad image shape {self.image_shape}")
        if self.num_classes < 2:
            raise PoisonlabError("key file: need at least 2 classes")
        if self.method == "taggants":
            _check_images(self.images, self.image_shape, "images")
            _check_labels(self.labels, len(self.images), self.num_classes, "labels")
            if not 1 <= self.top_k < self.num_classes:
                raise PoisonlabError(f"key file: top_k must be in [1, {self.num_classes - 1}], got {self.top_k}")
            if self.reference is not None:
                r = self.reference
                if not isinstance(r, torch.Tensor) or not r.is_floating_point() or \
                        tuple(r.shape) != (len(self.images), self.num_classes) or not bool(torch.isfinite(r).all()):
                    raise PoisonlabError(f"key file: reference must be finite float ({len(self.images)}, "
                                         f"{self.num_classes})")
        else:
            _check_unit(self.trigger, self.image_shape, "trigger")
            _check_unit(self.alpha, (1, *self.image_shape[1:]), "alpha")
            if self.target is None or not 0 <= int(self.target) < self.num_classes:
                raise PoisonlabError(f"key file: target class {self.target} out of range")
            self.target = int(self.target)
            _check_images(self.verify_images, self.image_shape, "verify_images")
            _check_labels(self.verify_labels, len(self.verify_images), self.num_classes, "verify_labels")
            if not 0 <= float(self.margin) < 1:
                raise PoisonlabError(f"key file: margin must be in [0, 1), got {self.margin}")

    # ----- file format ---------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"format": FORMAT, "method": self.method, "num_classes": self.num_classes,
                "image_shape": list(self.image_shape), "classes": list(self.classes), "top_k": self.top_k,
                "trigger_kind": self.trigger_kind, "target": self.target, "margin": self.margin, "params": self.params, "created": self.created}

    def save(self, path, *, published_dir=None, overwrite=False) -> Path:
        """Write the key privately (0600, atomically). Refuses a path inside the published folder."""
        path = Path(path).expanduser()
        if published_dir is not None:
            out = Path(published_dir).expanduser().resolve()
            if out == path.resolve() or out in path.resolve().parents:
                raise PoisonlabError(f"the key file {path} must not be inside the published folder {out}")
        if path.exists() and not overwrite:
            raise PoisonlabError(f"key file {path} exists; choose another path or pass --overwrite")
        arrays = {k: getattr(self, k).numpy() for k in _ARRAYS if getattr(self, k) is not None}
        arrays["meta"] = np.array(json.dumps(self.meta(), default=str))
        write_private(path, lambda f: np.savez(f, **arrays))
        return path


def write_private(path: Path, write):
    """Create a file readable by its owner only (mkstemp makes 0600 files) and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_key(path) -> OwnershipKey:
    """Read a key file without unpickling anything; every field is checked (a foreign file is an error)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PoisonlabError(f"key file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # truncated zip, object arrays (need pickle), not an npz at all, ...
        raise PoisonlabError(f"cannot read key file {path}: {e}") from None
    try:
        meta = json.loads(str(data.pop("meta")))
    except (KeyError, ValueError):
        raise PoisonlabError(f"{path} is not a poisonlab key file (no meta)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PoisonlabError(f"{path} is not a poisonlab key file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    unknown = set(data) - set(_ARRAYS)
    if unknown:
        raise PoisonlabError(f"{path}: unexpected arrays {sorted(unknown)}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
    try:
        return OwnershipKey(method=meta["method"], num_classes=int(meta["num_classes"]),
                            image_shape=tuple(meta["image_shape"]), classes=list(meta.get("classes") or []),
                            top_k=int(meta.get("top_k") or 1), target=meta.get("target"),
                            trigger_kind=str(meta.get("trigger_kind", "patch")),
                            margin=float(meta.get("margin", 0.2)), params=dict(meta.get("params") or {}),
                            created=str(meta.get("created", "")), **tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise PoisonlabError(f"{path}: malformed key file ({e})") from None


def _check_images(x, shape, name):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape) \
            or len(x) == 0:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise PoisonlabError(f"key file: {name} must be uint8 (N, {', '.join(map(str, shape))}), got {got}")


def _check_unit(x, shape, name):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or tuple(x.shape) != tuple(shape) \
            or not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise PoisonlabError(f"key file: {name} must be float ({', '.join(map(str, shape))}) in [0, 1]")


def _check_labels(y, n, num_classes, name):
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (n,):
        raise PoisonlabError(f"key file: {name} must be int64 ({n},)")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise PoisonlabError(f"key file: {name} out of range [0, {num_classes})")
