"""AR: class-wise autoregressive perturbations (model-free).

Sandoval-Segura, Singla, Geiping, Goldblum, Goldstein & Jacobs, "Autoregressive Perturbations for Data
Poisoning", NeurIPS 2022 (arXiv:2206.03693).

Each class k owns an AR process per channel: a 3x3 window whose 8 causal coefficients (the bottom-right
one, the pixel being generated, is 0) are drawn from N(0, 1) and normalised to sum 1. A perturbation is
made by filling a Gaussian start signal of size (H+crop) x (W+crop) in raster order, each pixel the
linear combination of its 8 already generated neighbours, then cropping the first `crop` rows and columns
and scaling to L2 norm eps (default 1.0, the paper's CIFAR budget). Every image gets its own start, so the
noise is sample-wise but class-consistent: the 3x3 "AR filter" (coefficients with -1 in the last place)
answers zero on its own class's noise and strongly on the others' -- a shortcut a CNN picks up at once.

Coefficients are found by the paper's greedy search: sample coefficients, reject processes whose
generated signals diverge (RMS above gen_rms_bound, the paper's bound of 5 in L2 on 3x32x32 per pixel)
and processes on which an already chosen class's filter responds less than `min_response` (the paper uses
10 for 10 classes, 3 for 100); the requirement is halved after `patience` rejections in a row, so any
number of classes terminates. Everything runs batch-wise over images and channels; only the raster
recursion loops over pixel positions.
"""

import torch
import torch.nn.functional as F

from .. import PoisonlabError
from ..registry import METHODS
from .base import Protection


def sample_coefficients(m: int, c: int, gen) -> torch.Tensor:
    """m random AR processes: (m, c, 3, 3), bottom-right tap 0, the other 8 sum to 1 per channel."""
    b = torch.randn((m, c, 3, 3), generator=gen, dtype=torch.float64)
    b[..., 2, 2] = 0
    return b / b.sum(dim=(2, 3), keepdim=True)


def ar_generate(coef: torch.Tensor, size, crop: int, gen) -> torch.Tensor:
    """Run the AR recursion for a batch: coef (n, c, 3, 3) -> unscaled signals (n, c, H, W) in float64.

    The first two rows and columns of the (H+crop) x (W+crop) canvas hold the N(0,1) start; every later
    pixel is the coefficient-weighted sum of the 3x3 window ending at it. All n*c series advance together
    (series are the contiguous last axis); within a row the recursion is order 2 along the row, so the
    contribution of the two rows above is computed for the whole row at once.
    """
    n, c = coef.shape[:2]
    h, w = size[0] + crop, size[1] + crop
    s = n * c
    x = torch.randn((n, c, h, w), generator=gen, dtype=torch.float64).permute(2, 3, 0, 1).reshape(h, w, s).contiguous()
    b = coef.reshape(s, 3, 3).permute(1, 2, 0).contiguous()  # (3, 3, s)
    for i in range(2, h):
        row = torch.zeros((w - 2, s), dtype=torch.float64)
        for r in range(2):
            for t in range(3):
                row += b[r, t] * x[i - 2 + r, t:t + w - 2]
        for j in range(2, w):
            x[i, j] = row[j - 2] + b[2, 0] * x[i, j - 2] + b[2, 1] * x[i, j - 1]
    return x.reshape(h, w, n, c).permute(2, 3, 0, 1)[:, :, crop:, crop:].contiguous()


def ar_filters(coef: torch.Tensor) -> torch.Tensor:
    """The matching detection filters: coefficients with -1 in the generated pixel's place (sum 0)."""
    f = coef.clone()
    f[..., 2, 2] = -1
    return f


def response(filters: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
    """ReLU-summed response of every filter (k, c, 3, 3) on every signal (m, c, H, W): (m, k)."""
    return F.relu(F.conv2d(signals, filters)).sum(dim=(2, 3))


def _l2_scale(x, eps):
    return x / x.flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, *([1] * (x.ndim - 1))) * eps


def quantise_l2(images: torch.Tensor, delta: torch.Tensor, eps: float, rounds: int = 6) -> torch.Tensor:
    """uint8 images + delta rounded to the nearest level, shrunk per image until ||saved - original||_2 <= eps.

    Rounding to nearest keeps the pattern (rounding toward zero would zero all small entries); images whose
    rounded change overshoots eps are scaled down and re-rounded; the last resort rounds toward zero,
    which can only shrink the change.
    """
    x = images.to(torch.float64)
    d = delta.to(torch.float64) * 255
    lim = eps * 255 * (1 - 1e-9)
    n = len(x)
    out = torch.empty_like(x)
    done = torch.zeros(n, dtype=torch.bool)
    scale = torch.ones(n, dtype=torch.float64)
    for _ in range(rounds):
        cand = (x + (d * scale.view(-1, 1, 1, 1)).round()).clamp(0, 255)
        norms = (cand - x).flatten(1).norm(dim=1)
        ok = (norms <= lim) & ~done
        out[ok] = cand[ok]
        done |= ok
        if bool(done.all()):
            break
        scale = torch.where(done, scale, scale * (lim / norms.clamp_min(1e-12)).clamp(max=1.0) * 0.999)
    if not bool(done.all()):
        safe = (x + (d * scale.view(-1, 1, 1, 1)).trunc()).clamp(0, 255)
        out[~done] = safe[~done]
    return out.to(torch.uint8)


@METHODS.register
class AR(Protection):
    """AR (Sandoval-Segura et al. NeurIPS 2022): class-wise autoregressive noise, L2 budget."""

    name = "ar"
    norm = "l2"
    default_eps = 1.0
    min_side = 3  # the 3x3 AR window and its detection filter

    def __init__(self, eps=None, seed=0, device="auto", crop=4, min_response=None, gen_rms_bound=1.0,
                 trials=3, patience=200, batch=2048):
        super().__init__(eps, seed, device)
        self.crop, self.trials, self.patience, self.batch = int(crop), int(trials), int(patience), int(batch)
        self.min_response = None if min_response is None else float(min_response)
        self.gen_rms_bound = float(gen_rms_bound)
        if self.crop < 0 or self.trials < 1 or self.patience < 1 or self.batch < 1:
            raise PoisonlabError("ar: crop must be >= 0 and trials, patience, batch >= 1")

    def _stable_channels(self, count, size, gen):
        """`count` single-channel processes whose signals stay bounded in every trial: (count, 3, 3)."""
        pool, sampled, found = [], 0, 0
        while found < count:
            cand = sample_coefficients(256, 1, gen)
            sampled += 256
            sig = ar_generate(cand.repeat_interleave(self.trials, 0), size, self.crop, gen)
            rms = sig.flatten(1).pow(2).mean(1).sqrt().view(256, self.trials)
            stable = (torch.isfinite(rms) & (rms <= self.gen_rms_bound)).all(1)
            pool.append(cand[stable, 0])
            found += int(stable.sum())
            if sampled >= 50_000 and found < sampled / 1000:
                raise PoisonlabError(f"ar: only {found} of {sampled} sampled AR processes are stable; "
                                     "raise gen_rms_bound")
        self._sampled += sampled
        return torch.cat(pool)[:count]

    def search(self, num_classes: int, channels: int, size, gen):
        """Greedy coefficient search; returns (num_classes, channels, 3, 3).

        A class process is `channels` stable single-channel processes (sampling channels jointly and
        rejecting unstable ones has the same distribution, but wastes most samples). A candidate is kept
        when every already chosen class's AR filter responds to its (L2 = 1) signal with at least `need`.
        """
        need = self.min_response if self.min_response is not None else (10.0 if num_classes <= 10 else 3.0)
        chosen, rejected_in_row, self._sampled = [], 0, 0
        while len(chosen) < num_classes:
            cand = self._stable_channels(64 * channels, size, gen).view(64, channels, 3, 3)
            sig = _l2_scale(ar_generate(cand, size, self.crop, gen), 1.0)
            for m in range(64):
                if len(chosen) == num_classes:
                    break
                ok = not chosen or float(response(ar_filters(torch.stack(chosen)), sig[m:m + 1]).min()) >= need
                if ok:
                    chosen.append(cand[m])
                    rejected_in_row = 0
                else:
                    rejected_in_row += 1
                    if rejected_in_row >= self.patience:
                        need, rejected_in_row = need / 2, 0
        self.search_info = {"min_response_used": need, "sampled": self._sampled}
        return torch.stack(chosen)

    def perturb(self, data, ckpt):
        n, (c, h, w) = len(data), data.shape
        g = torch.Generator().manual_seed(self.seed)
        self.coefficients = self.search(data.num_classes, c, (h, w), g)
        out = torch.empty((n, c, h, w), dtype=torch.float64)
        for i in range(0, n, self.batch):
            coef = self.coefficients[data.labels[i:i + self.batch]]
            sig = ar_generate(coef, (h, w), self.crop, g)
            if not bool(torch.isfinite(sig).all()):
                raise PoisonlabError("ar: an AR signal diverged; lower gen_rms_bound")
            out[i:i + self.batch] = _l2_scale(sig, self.eps)
        return out

    def bound(self) -> dict:
        b = {**super().bound(), "eps_text": f"L2 {self.eps:g} per image"}
        if getattr(self, "search_info", None) is not None:
            b["coefficient_search"] = self.search_info
        return b

    def generate(self, data, ckpt):
        return quantise_l2(data.images, self.perturb(data, ckpt), self.eps)
