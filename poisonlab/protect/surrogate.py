"""What model-based protections share: a surrogate model, its optimiser, seeded minibatches, a
whole-data noise pass, and progress/checkpoint plumbing. Methods (EM, REM, min-max-min, TAP) only add
their own objective on top."""

import copy

import torch
import torch.nn.functional as F

from ..augment import Augment
from ..budget import budget_to_levels, parse_budget
from ..models import create_model
from ..progress import progress as progress_bar
from ..pgd import LinfPGD
from ..runtime import autocast, pick_device, prepare_model, seed_everything, to_float_batch
from .base import Protection


class Batches:
    """Endless reshuffled minibatches of indices, drawn from a seeded generator on the device."""

    def __init__(self, n, batch_size, gen):
        self.n, self.bs, self.gen, self.perm, self.pos = n, min(batch_size, n), gen, None, n

    def next(self):
        if self.pos + self.bs > self.n:
            self.perm, self.pos = torch.randperm(self.n, device=self.gen.device, generator=self.gen), 0
        idx = self.perm[self.pos:self.pos + self.bs]
        self.pos += self.bs
        return idx

    def state(self):
        return {"perm": None if self.perm is None else self.perm.cpu(), "pos": self.pos}

    def load(self, state):
        self.perm = None if state["perm"] is None else state["perm"].to(self.gen.device)
        self.pos = state["pos"]


class SurrogateMethod(Protection):
    """Base of the model-based methods: surrogate settings and shared helpers.

    surrogate/width: model name and width multiplier (ResNet-18 at width 1 in the papers);
    batch_size/lr/momentum/weight_decay: SGD settings of the surrogate; augment: train the surrogate and
    average noise gradients over random crops+flips (expectation over augmentations); eot: number of
    augmented copies each noise gradient is averaged over.
    """

    model_based = True
    # Clean images the surrogate never trains on, for the held-out diagnostics (an ImageSet set by the
    # caller, e.g. a validation split or the source's test split); None skips them.
    holdout = None
    holdout_limit = 1000
    diagnostic_points = 10  # held-out evaluations over a run
    compile_model = False  # torch.compile the surrogate's forward (CUDA; results do not depend on it)
    # Under torchrun: a poisonlab.distributed.DataParallel set by the caller (methods with data_parallel =
    # True split every batch over the ranks; not a setting: results and checkpoints do not depend on it).
    parallel = None
    data_parallel = False

    def __init__(self, eps=None, seed=0, device="auto", surrogate="resnet18", width=1.0, batch_size=128,
                 lr=0.1, momentum=0.9, weight_decay=5e-4, augment=True, eot=1):
        super().__init__(eps, seed, device)
        self.surrogate, self.width, self.batch_size = surrogate, float(width), int(batch_size)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.augment, self.eot = bool(augment), int(eot)
        self.progress = False

    @property
    def surrogate_info(self):
        return {"model": self.surrogate, "width": self.width}

    def new_surrogate(self, data):
        """A fresh surrogate: a registered model by name, or a copy of the user's nn.Module (their model
        is never trained in place)."""
        if isinstance(self.surrogate, torch.nn.Module):
            return copy.deepcopy(self.surrogate)
        return create_model(self.surrogate, data.num_classes, data.shape[0], self.width)

    def setup(self, data, build_model=True):
        """Device, surrogate, optimiser, generator and the data as device tensors
        (model and optimiser are None when build_model is False, e.g. TAP trains its own)."""
        self.device_ = pick_device(self.device) if self.parallel is None else self.parallel.device
        seed_everything(self.seed)
        model = opt = None
        if build_model:
            model = prepare_model(self.new_surrogate(data), self.device_)
            opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        gen = torch.Generator(device=self.device_).manual_seed(self.seed)
        self.aug = Augment().geometric if self.augment else None
        return model, opt, gen, data.images.to(self.device_), data.labels.to(self.device_)

    def forward_model(self, model):
        """What the loops call: the model itself, or a compiled view sharing its parameters (whose
        state_dict stays the plain model's, so checkpoints do not depend on compiling)."""
        if self.compile_model and self.device_.type == "cuda":
            return torch.compile(model)
        return model

    def batch(self, images, idx):
        return to_float_batch(images[idx], self.device_)

    def linf(self, eps, step_size, steps, minimize, eot=1, augment=None, random_start=True):
        return LinfPGD(parse_budget(eps), alpha=parse_budget(step_size), steps=int(steps), minimize=minimize,
                       eot=eot, augment=augment, random_start=random_start)

    def bar(self, total, initial, desc):
        return progress_bar(total, desc, initial=initial, enabled=self.progress)

    # ----- diagnostics (self.diagnostics_, carried into the result meta and the manifest) ---------------
    def diagnostic_attack(self):
        """The adversary of the held-out adversarial accuracy: the method's own where it has one."""
        return getattr(self, "adv_pgd", None) or self.linf(4 / 255, 2.5 * 4 / 255 / 3, 3, False)

    def heldout_accuracy(self, model) -> dict | None:
        """Clean and adversarial accuracy (%) of the surrogate on the held-out images (frozen BN). Its own
        generator, so measuring never changes the run's random stream."""
        if self.holdout is None:
            return None
        images = self.holdout.images[:self.holdout_limit].to(self.device_)
        labels = self.holdout.labels[:self.holdout_limit].to(self.device_)
        gen = torch.Generator(device=self.device_).manual_seed(self.seed + 1)
        attack = self.diagnostic_attack()
        model.eval()
        clean = adv = 0
        for s in range(0, len(images), 500):
            idx = torch.arange(s, min(s + 500, len(images)), device=images.device)
            x, y = self.batch(images, idx), labels[idx]
            with autocast(self.device_):
                delta = attack(model, x, y, gen=gen)
                with torch.no_grad():
                    clean += (model(x).argmax(1) == y).sum()
                    adv += (model(x + delta).argmax(1) == y).sum()
        n = max(len(images), 1)
        return {"heldout_clean_acc": round(clean.item() * 100 / n, 2), "heldout_adv_acc": round(adv.item() * 100 / n, 2)}

    def diagnostic_due(self, step, total):
        every = max(1, total // max(self.diagnostic_points, 1))
        return step % every == 0 or step == total

    @torch.no_grad()
    def noise_report(self, model, images, labels, noise) -> dict:
        """How far the final noise went: fraction of its pixels at +-eps (8-bit levels), and the final
        surrogate's loss/accuracy on the protected training images against the clean ones (no augmentation)."""
        lv = budget_to_levels(self.eps)
        edge = ((noise * 255).round().abs() >= lv).float().mean().item()
        model.eval()
        sums = {"protected": [0.0, 0], "clean": [0.0, 0]}
        for s in range(0, len(images), 500):
            idx = torch.arange(s, min(s + 500, len(images)), device=images.device)
            x, y = self.batch(images, idx), labels[idx]
            for key, xin in (("clean", x), ("protected", (x + noise[idx].to(x.device)).clamp(0, 1))):
                with autocast(self.device_):
                    logits = model(xin)
                sums[key][0] += F.cross_entropy(logits.float(), y, reduction="sum").item()
                sums[key][1] += (logits.argmax(1) == y).sum().item()
        n = max(len(images), 1)
        return {"edge_fraction": round(edge, 4), "noise_train_loss": round(sums["protected"][0] / n, 4),
                "noise_train_acc": round(sums["protected"][1] * 100 / n, 2),
                "clean_train_loss": round(sums["clean"][0] / n, 4), "clean_train_acc": round(sums["clean"][1] * 100 / n, 2)}

    def record_diagnostics(self, model, images, labels, noise, curve):
        """Fill self.diagnostics_ from the final noise and the run's held-out curve."""
        self.diagnostics_ = {**self.noise_report(model, images, labels, noise),
                            "heldout_size": 0 if self.holdout is None else min(len(self.holdout), self.holdout_limit),
                            "heldout_curve": [r for r in curve if "heldout_clean_acc" in r]}
        final = self.heldout_accuracy(model)
        if final:
            self.diagnostics_.update({f"final_{k}": v for k, v in final.items()})
        return self.diagnostics_

    def noise_pass(self, images, labels, noise, update, ckpt, state, stage, desc, draws=None):
        """Recompute noise for every image in fixed batches with update(x, y, idx) -> delta.

        Resumable: the index of the next batch is checkpointed with the noise under `stage`.
        draws (a poisonlab.distributed.SharedDraws): this rank computes its share of every batch on one
        process's random stream and the batch's noise is gathered on every rank.
        """
        n = len(images)
        starts = list(range(0, n, self.batch_size))
        first = state.get("batch", 0) if state.get("stage") == stage else 0
        with self.bar(len(starts), first, desc) as bar:
            for b in range(first, len(starts)):
                idx = torch.arange(starts[b], min(starts[b] + self.batch_size, n), device=images.device)
                mine = idx if draws is None else idx[draws.set(len(idx))]
                if len(mine):
                    with autocast(self.device_):
                        new = quantize(update(self.batch(images, mine), labels[mine], mine))
                else:  # an empty share (a last batch smaller than the world) computes nothing
                    new = noise[mine]
                if draws is None:
                    noise[idx] = new
                else:
                    noise[idx] = draws.gather(new)
                    draws.resync()
                bar.update(1)
                ckpt.save(lambda: {**state, "stage": stage, "batch": b + 1, "noise": noise.cpu()})
        return noise


def quantize(delta):
    """Keep noise on the 8-bit grid it will be published on."""
    return (delta * 255).round_().div_(255)


def cross_entropy(logits, y):
    return F.cross_entropy(logits.float(), y)
