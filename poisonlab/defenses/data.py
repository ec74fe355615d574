"""Data-level countermeasures: fixed transforms of the uint8 training images (batch-wise tensors).

Image Shortcut Squeezing (ISS, Liu et al. 2023) showed that simple compressions remove most
unlearnable-example shortcuts: JPEG at low quality against L-inf noise, grayscale against colour
(class-wise) patterns, and bit-depth reduction. Gaussian and median filtering are the classic low-pass
pre-processing baselines. All return a new ImageSet with the same shape and dtype.
"""

import io
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from .. import PoisonlabError
from ..data import ImageSet
from ..registry import DEFENSES
from .base import Defense, batched


@DEFENSES.register
class NoDefense(Defense):
    """No countermeasure: standard training on the data as published."""

    name = "none"
    aliases = ("clean", "standard")
    kind = "none"

    def display(self):
        return "none"


@DEFENSES.register
class JPEG(Defense):
    """JPEG compression at quality q (ISS uses q=10). codec="pil" runs the real libjpeg codec per image
    (4:2:0 chroma subsampling as Pillow's default, decoded back to uint8); codec="kornia" uses kornia's
    differentiable JPEG approximation, batch-wise on tensors."""

    name = "jpeg"

    def __init__(self, quality=10, codec="pil"):
        self.quality = int(quality)
        if not 1 <= self.quality <= 100:
            raise PoisonlabError(f"jpeg quality must be in [1, 100], got {quality}")
        if codec not in ("pil", "kornia"):
            raise PoisonlabError(f"jpeg codec must be pil or kornia, got {codec!r}")
        self.codec = codec

    def display(self):
        return f"JPEG-{self.quality}" + (" (kornia)" if self.codec == "kornia" else "")

    def apply(self, data: ImageSet) -> ImageSet:
        if self.codec == "kornia":
            return data.with_images(self._kornia(data.images))
        imgs = data.images.numpy()

        def one(a):
            im = Image.fromarray(a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0)))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=self.quality)
            buf.seek(0)
            with Image.open(buf) as dec:
                b = np.asarray(dec.convert(im.mode), dtype=np.uint8)
            return b[None] if b.ndim == 2 else b.transpose(2, 0, 1)

        with ThreadPoolExecutor(max_workers=2) as pool:
            out = list(pool.map(one, imgs, chunksize=256))
        return data.with_images(torch.from_numpy(np.stack(out)))

    def _kornia(self, images):
        from kornia.enhance import jpeg_codec_differentiable
        if images.shape[1] != 3:
            raise PoisonlabError("the kornia JPEG codec needs RGB images; use codec=pil")
        h, w = images.shape[2:]
        if h % 16 or w % 16:
            raise PoisonlabError(f"the kornia JPEG codec needs sides divisible by 16, got {h}x{w}; use codec=pil")
        q = torch.tensor([float(self.quality)])
        return batched(images, lambda x: jpeg_codec_differentiable(x, q.expand(len(x))), 512)


@DEFENSES.register
class Grayscale(Defense):
    """Grayscale (ISS): ITU-R 601 luma, replicated to every channel so the victim's input shape is kept.

    A fixed input transform, so the exploiter applies it to the test images too (test_too=True):
    a model trained on gray images is meant to be used on gray images. test=False keeps the test clean.
    """

    name = "gray"
    aliases = ("grayscale",)

    def __init__(self, test=True):
        self.test = bool(test)
        self.test_too = self.test

    def display(self):
        return "grayscale"

    def apply(self, data: ImageSet) -> ImageSet:
        if data.images.shape[1] == 1:
            return data
        from kornia.color import rgb_to_grayscale
        return data.with_images(batched(data.images, lambda x: rgb_to_grayscale(x).expand_as(x)))


@DEFENSES.register
class BitDepth(Defense):
    """Bit-depth reduction (ISS): quantise every channel to 2**bits evenly spaced levels spanning 0..255
    (round(x * (2**bits - 1)) / (2**bits - 1)); bits=1 leaves only 0 and 255."""

    name = "bits"
    aliases = ("bdr",)

    def __init__(self, bits=4):
        self.bits = int(bits)
        if not 1 <= self.bits <= 8:
            raise PoisonlabError(f"bits must be in [1, 8], got {bits}")

    def display(self):
        return f"{self.bits}-bit"

    def apply(self, data: ImageSet) -> ImageSet:
        levels = 2 ** self.bits - 1
        return data.with_images(batched(data.images, lambda x: torch.round(x * levels) / levels))


@DEFENSES.register
class GaussianBlur(Defense):
    """Gaussian low-pass filter (kornia.filters.gaussian_blur2d), kernel 2*ceil(2*sigma)+1, reflect border."""

    name = "gauss"
    aliases = ("gaussian",)

    def __init__(self, sigma=1.0, kernel=None):
        self.sigma = float(sigma)
        if self.sigma <= 0:
            raise PoisonlabError(f"gauss sigma must be > 0, got {sigma}")
        self.kernel = int(kernel) if kernel else 2 * math.ceil(2 * self.sigma) + 1
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise PoisonlabError(f"gauss kernel must be odd and >= 3, got {self.kernel}")

    def display(self):
        return f"Gauss σ={self.sigma:g}"

    def apply(self, data: ImageSet) -> ImageSet:
        from kornia.filters import gaussian_blur2d
        k, s = self.kernel, self.sigma
        return data.with_images(batched(data.images, lambda x: gaussian_blur2d(x, (k, k), (s, s))))


@DEFENSES.register
class MedianBlur(Defense):
    """Median filter over a k x k window (kornia.filters.median_blur)."""

    name = "median"

    def __init__(self, kernel=3):
        self.kernel = int(kernel)
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise PoisonlabError(f"median kernel must be odd and >= 3, got {kernel}")

    def display(self):
        return f"median {self.kernel}x{self.kernel}"

    def apply(self, data: ImageSet) -> ImageSet:
        from kornia.filters import median_blur
        return data.with_images(batched(data.images, lambda x: median_blur(x, self.kernel)))
