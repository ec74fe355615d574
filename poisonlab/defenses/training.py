"""Training-side countermeasures: PGD adversarial training, label-mixing/occlusion augmentation,
early stopping, and UEraser's heavy augmentation (a training hook: train_victim(..., hooks=d.hooks()))."""

import kornia.augmentation as K
import torch
import torch.nn.functional as F

from .. import PoisonlabError
from ..budget import budget_text, parse_budget
from ..registry import DEFENSES
from ..runtime import to_device_images
from .base import Defense


# ---------------------------------------------------------------- adversarial training
@DEFENSES.register
class AdversarialTraining(Defense):
    """PGD adversarial training of the victim (Madry et al. 2018) with radius eps (L-inf by default).

    steps/alpha: PGD iterations and step size (default: the grid's train.adv_steps, alpha = 2.5*eps/steps).
    """

    name = "at"
    aliases = ("at-linf", "adv")
    kind = "config"
    norm = "linf"

    def __init__(self, eps=4 / 255, steps=None, alpha=None):
        self.eps = parse_budget(eps, "at eps", allow_zero=True, maximum=1.0 if self.norm == "linf" else None)
        self.steps = int(steps) if steps is not None else None
        self.alpha = parse_budget(alpha, "at alpha") if alpha is not None else None

    def display(self):
        return f"AT {budget_text(self.eps)}" if self.norm == "linf" else f"AT-L2 {self.eps:g}"

    def params(self):
        p = {"eps": self.eps}
        if self.steps is not None:
            p["steps"] = self.steps
        if self.alpha is not None:
            p["alpha"] = self.alpha
        return p

    def configure(self, train_kw):
        kw = dict(train_kw, adv_eps=self.eps, adv_norm=self.norm)
        if self.steps is not None:
            kw["adv_steps"] = self.steps
        if self.alpha is not None:
            kw["adv_alpha"] = self.alpha
        return kw


@DEFENSES.register
class AdversarialTrainingL2(AdversarialTraining):
    """PGD adversarial training with an L2 ball of radius eps (in [0,1] pixel units, e.g. 0.5)."""

    name = "at-l2"
    aliases = ("adv-l2",)
    norm = "l2"

    def __init__(self, eps=0.5, steps=None, alpha=None):
        super().__init__(eps, steps, alpha)


# ---------------------------------------------------------------- augmentation in the Augment pipeline
def _with_aug(augment: str, extra: str) -> str:
    """Append an Augment.parse item to a pipeline spec ("standard" spelled out as crop=4,flip)."""
    if augment in (None, "", "standard"):
        return f"crop=4,flip,{extra}"
    if augment == "none":
        return extra
    return f"{augment},{extra}"


class _AugmentDefense(Defense):
    kind = "config"
    field = ""

    def configure(self, train_kw):
        value = getattr(self, self.param)
        return dict(train_kw, augment=_with_aug(train_kw.get("augment", "standard"), f"{self.field}={value}"))

    def display(self):
        return self.name


@DEFENSES.register
class Cutout(_AugmentDefense):
    """Cutout (DeVries & Taylor 2017): zero a size x size square in every training image."""

    name, field, param = "cutout", "cutout", "size"

    def __init__(self, size=16):
        self.size = int(size)
        if self.size < 1:
            raise PoisonlabError("cutout size must be >= 1")


class _MixingDefense(_AugmentDefense):
    """Label-mixing augmentation parameterised by a Beta(alpha, alpha) draw."""

    param = "alpha"

    def __init__(self, alpha=1.0):
        self.alpha = float(alpha)
        if self.alpha <= 0:
            raise PoisonlabError(f"{self.name} alpha must be > 0")


@DEFENSES.register
class Mixup(_MixingDefense):
    """Mixup (Zhang et al. 2018) with a Beta(alpha, alpha) weight."""

    name, field = "mixup", "mixup"


@DEFENSES.register
class CutMix(_MixingDefense):
    """CutMix (Yun et al. 2019) with a Beta(alpha, alpha) area."""

    name, field = "cutmix", "cutmix"


# ---------------------------------------------------------------- early stopping
@DEFENSES.register
class EarlyStopping(Defense):
    """Early stopping: the exploiter keeps the epoch with the best clean test accuracy (an oracle
    upper bound on validation-based stopping). Training is the standard run; only the report differs."""

    name = "early"
    aliases = ("es", "early-stop")
    kind = "none"
    report = "best"

    def display(self):
        return "early stop"


# ---------------------------------------------------------------- UEraser
@DEFENSES.register
class UEraser(Defense):
    """UEraser (Qin et al. 2023, "Learning the Unlearnable"): heavy photometric/geometric augmentation
    from kornia (PlasmaBrightness, PlasmaContrast, ChannelShuffle, then TrivialAugment), applied after
    the standard crop/flip. repeats=K > 1 is UEraser-Max: K augmented copies of each image, training on
    the copy with the largest loss (adversarial augmentation); repeats=1 is UEraser-Lite.

    A training hook (its `loss`); kornia draws from torch's global generator, so every batch reseeds a
    forked copy of it from the training generator: a training seed reproduces the run exactly.
    """

    name = "ueraser"
    kind = "train"

    def __init__(self, repeats=1, trivial=True, p=0.5):
        self.repeats, self.trivial, self.p = int(repeats), bool(trivial), float(p)
        if self.repeats < 1:
            raise PoisonlabError("ueraser repeats must be >= 1")
        if not 0 <= self.p <= 1:
            raise PoisonlabError("ueraser p must lie in [0, 1]")
        self._aug = None

    def hooks(self):
        return [self]

    def display(self):
        return "UEraser" + (f"-Max K={self.repeats}" if self.repeats > 1 else "-Lite")

    def augmenter(self):
        if self._aug is None:
            ops = [K.RandomPlasmaBrightness(roughness=(0.3, 0.7), intensity=(0.5, 1.0), p=self.p),
                   K.RandomPlasmaContrast(roughness=(0.3, 0.7), p=self.p),
                   K.RandomChannelShuffle(p=self.p)]
            if self.trivial:
                ops.append(K.auto.TrivialAugment())
            self._aug = K.AugmentationSequential(*ops)
        return self._aug

    def transform(self, x, gen=None):
        """Augmented copy of x in [0, 1]; with gen, the draws come from it (reproducible under its seed)."""
        if gen is None:
            return self.augmenter()(x.contiguous()).clamp(0, 1)
        seed = int(torch.randint(0, 2**62, (), generator=gen, device=gen.device))
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self.augmenter()(x.contiguous()).clamp(0, 1)

    def loss(self, model, x, y, y_soft, state):
        """Per-sample loss: the largest over `repeats` augmented copies; logits of the first copy."""
        b, k = x.shape[0], self.repeats
        xs = self.transform(x.repeat(k, 1, 1, 1) if k > 1 else x, getattr(state, "generator", None))
        xs = to_device_images(xs, xs.device)
        logits = model(xs)
        if y_soft is not None:
            per = -(y_soft.repeat(k, 1) * F.log_softmax(logits.float(), dim=1)).sum(1)
        else:
            per = F.cross_entropy(logits.float(), y.repeat(k), reduction="none")
        return per.view(k, b).max(0).values, logits[:b]
