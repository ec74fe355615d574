"""Victim training with hooks: standard and PGD adversarial training, SGD schedules, clean test accuracy
per epoch, on tensors or ImageSets, with poisonlab's models or the user's own nn.Module.

    result = train_victim((x_uint8, y), (x_test, y_test), TrainConfig(epochs=5), hooks=[MyHook()], model=net)

The whole uint8 data set sits on the device as one tensor; batches are sliced, converted and augmented
there. Runs are deterministic under a seed (on CPU; cuDNN may add tiny nondeterminism on GPU) and can
checkpoint every epoch and resume.

A hook is any object implementing some of (every randomness drawn from state.generator):
    select(epoch, state) -> None | LongTensor of indices to train on this epoch | FloatTensor (N,) of
                            per-sample loss weights (the loss is mean(weight * per-sample loss))
    transform_batch(x, y, y_soft, state) -> (x, y_soft)     after augmentation, in hook order
    loss(model, x, y, y_soft, state) -> (per-sample loss (B,), logits (B, K))   at most one hook
    after_step(state)                                         state.loss / state.logits / state.index set
    after_epoch(epoch, record, state)                         record: the epoch's history dict (may add
                                                              keys); set state.stop = True to stop early
    spec() -> str                                             identity for checkpoint keys (optional)
Adversarial training is such a hook (AdversarialTraining), built from TrainConfig.adv_* fields.
"""

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Literal
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import PoisonlabError
from .augment import Augment
from .data import ImageSet
from .checks import check_model_input
from .fileio import atomic_write, load_state
from .progress import progress as progress_bar
from .hashing import digest
from .pairing import match_stems
from .options import Budget, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, coerce_options
from .models import create_model
from .pgd import make_pgd
from .result import to_imageset
from .runtime import autocast, pick_device, prepare_model, seed_everything, to_float_batch

HOOK_METHODS = ("select", "transform_batch", "loss", "after_step", "after_epoch")


@dataclass
class TrainConfig:
    """Victim training settings; the types are checked (and the command line's options generated) from
    these annotations: a bad value is one PoisonlabError, e.g. epochs=-3, lr=nan, batch_size="abc"."""
    model: str = "smallcnn"  # poisonlab models lists them
    width: PositiveFloat = 1.0  # channel width multiplier (CPU-scale runs)
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 0.1
    momentum: NonNegativeFloat = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    augment: str = "standard"  # standard | none | crop=4,flip,cutout=16,mixup=1,cutmix=1 (Augment.parse)
    adv_eps: Budget = 0.0  # PGD adversarial training radius, e.g. 4/255 (0 = standard training)
    adv_norm: Literal["linf", "l2"] = "linf"
    adv_steps: NonNegativeInt = 10
    adv_alpha: Budget | None = None  # PGD step size (default 2.5 * eps / steps)
    seed: NonNegativeInt = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    amp: bool = True  # bf16 autocast on CUDA
    extra: dict = field(default_factory=dict)  # free-form labels carried into results (e.g. countermeasure)

    def __post_init__(self):
        typed = coerce_options(TrainConfig, {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})
        for k, v in typed.items():
            setattr(self, k, v)
        if self.adv_norm == "linf" and self.adv_eps > 1:
            raise PoisonlabError(f"adv_eps: {self.adv_eps} exceeds the maximum 1.0 of an L-inf radius")
        Augment.parse(self.augment)  # validate early

    def key(self) -> str:
        return digest(asdict(self))


def _resume_key(cfg: TrainConfig, hooks=()) -> str:
    """Checkpoint identity: the configuration less the epoch count (so a constant-schedule run can be
    extended), plus the identity of the hooks given."""
    d = asdict(cfg)
    d.pop("epochs")
    specs = [hook_spec(h) for h in hooks]
    if specs:
        d["hooks"] = specs
    return digest(d)


def hook_spec(hook) -> str:
    return hook.spec() if hasattr(hook, "spec") else type(hook).__qualname__


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))
    if cfg.schedule == "multistep":
        return cfg.lr * (0.1 ** sum(step >= total * m for m in (0.5, 0.75)))
    return cfg.lr


@torch.no_grad()
def evaluate(model, data: ImageSet, device, batch_size=512, amp=True) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        with autocast(device, amp):
            pred = model(to_float_batch(data.images[i:i + batch_size], device)).argmax(1)
        correct += (pred.cpu() == data.labels[i:i + batch_size]).sum().item()
    return 100.0 * correct / max(len(data), 1)


def soft_cross_entropy(logits, y_soft, reduction="mean"):
    per = -(y_soft * F.log_softmax(logits.float(), dim=1)).sum(1)
    return per.mean() if reduction == "mean" else per


def per_sample_loss(logits, y, y_soft):
    """Cross-entropy per sample, against soft targets when augmentation mixed labels."""
    if y_soft is not None:
        return soft_cross_entropy(logits, y_soft, reduction="none")
    return F.cross_entropy(logits.float(), y, reduction="none")


@dataclass
class TrainState:
    """What hooks see: the model and optimiser, the training generator, progress, and the last batch."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    config: TrainConfig
    device: torch.device
    num_classes: int
    num_samples: int
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    index: torch.Tensor | None = None  # sample indices of the current batch
    loss: torch.Tensor | None = None  # the batch's scalar loss (after weighting)
    losses: torch.Tensor | None = None  # the batch's per-sample losses
    logits: torch.Tensor | None = None
    stop: bool = False

    def autocast(self):
        return autocast(self.device, self.config.amp)


class AdversarialTraining:
    """PGD adversarial training (Madry et al. 2018) as a hook: every batch is replaced by its PGD
    adversarial example within eps (attacked with frozen BN statistics), then trained on."""

    def __init__(self, eps, norm="linf", steps=10, alpha=None):
        self.attack = make_pgd(norm, eps, steps=steps, alpha=alpha)

    def spec(self):
        a = self.attack
        return f"at:{a.norm},eps={a.eps:.6g},steps={a.steps},alpha={a.alpha:.6g}"

    def transform_batch(self, x, y, y_soft, state):
        model = state.model
        model.eval()
        with state.autocast():
            target = y_soft if y_soft is not None else y
            self.attack.loss_fn = soft_cross_entropy if y_soft is not None else F.cross_entropy
            x = x + self.attack(model, x, target, gen=state.generator)
        model.train()
        return x, y_soft


def _one(hooks, method):
    found = [h for h in hooks if hasattr(h, method)]
    if len(found) > 1:
        raise PoisonlabError(f"at most one hook may implement {method}; got {[hook_spec(h) for h in found]}")
    return found[0] if found else None


def _as_set(data, what):
    if data is None or isinstance(data, ImageSet):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return to_imageset(*data)[0]
    raise PoisonlabError(f"{what} must be an ImageSet or an (images, labels) pair")


def train_victim(train, test=None, cfg: TrainConfig | None = None, progress=True,
                 checkpoint: str | Path | None = None, return_model=False, *, hooks=(), model: nn.Module | None = None,
                 parallel=None):
    """Train a model on train, report clean accuracy on test after every epoch.

    train/test: ImageSets or (images, labels) pairs (uint8, or float in [0,1]); test may be None.
    model: the user's own nn.Module (trained in place; it takes inputs in [0,1]) instead of cfg.model.
    hooks: objects implementing the hook methods above. parallel: a poisonlab.distributed.DataParallel
    (torchrun): this process trains its share of every batch. Returns a dict with history, last/best accuracy
    and throughput (and the model if asked). With checkpoint set, state is saved atomically after every
    epoch and a rerun resumes from it.
    """
    cfg = cfg or TrainConfig()
    train, test = _as_set(train, "train"), _as_set(test, "test")
    if len(train) == 0:
        raise PoisonlabError("the training set is empty")
    if train.num_classes < 2:  # e.g. a flat folder of unlabelled images: nothing to classify
        raise PoisonlabError(f"the training set has {train.num_classes} class ({', '.join(train.classes)}); "
                             "a classifier needs at least 2 (use class folders)")
    if test is not None and test.shape != train.shape:
        raise PoisonlabError(f"test images {test.shape} do not match training images {train.shape}")
    hooks = list(hooks)
    for h in hooks:
        if not any(hasattr(h, m) for m in HOOK_METHODS):
            raise PoisonlabError(f"{h!r} is not a training hook: it implements none of {HOOK_METHODS}")
    device = pick_device(cfg.device) if parallel is None else parallel.device
    seed_everything(cfg.seed)
    user_model = model
    model = prepare_model(user_model if user_model is not None else
                          create_model(cfg.model, train.num_classes, train.shape[0], cfg.width), device)
    check_model_input(model, train.shape, cfg.model if user_model is None else type(user_model).__name__)
    net = model
    if parallel is not None:  # the DDP wrapper trains; the plain model is saved, evaluated and attacked
        net = parallel.wrap(model)
        model = net.module
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.momentum > 0)
    aug = Augment.parse(cfg.augment)
    all_hooks = ([AdversarialTraining(cfg.adv_eps, cfg.adv_norm, cfg.adv_steps, cfg.adv_alpha)]
                 if cfg.adv_eps > 0 else []) + hooks
    selector, loss_hook = _one(all_hooks, "select"), _one(all_hooks, "loss")
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    images, labels = train.images.to(device), train.labels.to(device)
    n = len(train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    state = TrainState(model, opt, gen, cfg, device, train.num_classes, n, total_steps=total)
    history, start_epoch, train_time = [], 0, 0.0

    ckpt = Path(checkpoint) if checkpoint else None
    key = _resume_key(cfg, hooks)
    if ckpt is not None and ckpt.exists():
        history, start_epoch, train_time = _restore(ckpt, key, cfg, n, model, opt, gen, hooks)

    desc = cfg.model if user_model is None else type(user_model).__name__
    bar = progress_bar(total, f"{desc}{' AT ' + str(round(cfg.adv_eps * 255, 2)) + '/255' if cfg.adv_eps else ''}",
                       initial=start_epoch * steps_per_epoch, enabled=progress and (parallel is None or parallel.is_main),
                       unit="batch")
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        state.epoch = epoch
        t0 = time.perf_counter()
        chosen = selector.select(epoch, state) if selector is not None else None
        weights = None
        if chosen is not None and chosen.is_floating_point():
            weights, chosen = chosen.to(device), None
        pool = chosen.to(device) if chosen is not None else None
        m = len(pool) if pool is not None else n
        if parallel is not None:  # every rank draws the same permutation
            parallel.sync_generator(gen)
        perm = torch.randperm(m, device=device, generator=gen)
        if pool is not None:
            perm = pool[perm]
        # Summed on the device (no host sync per batch); float64 as the host sums were, except on MPS.
        loss_sum = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
        correct, seen, scale = torch.zeros((), dtype=torch.long, device=device), 0, None
        for b in range(math.ceil(m / cfg.batch_size)):
            step = epoch * steps_per_epoch + b
            state.step = step
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step, total)
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if parallel is not None and b:  # hooks may draw rank-dependent amounts (AT on uneven shares)
                parallel.sync_generator(gen)
            # Drawn for the global batch (one process's stream); a rank loads and augments its share alone.
            draws = aug.draw(len(idx), train.shape[1:], device, gen)
            rows, scale = parallel.share(len(idx)) if parallel is not None else (None, None)
            y = labels[idx]
            x, y_soft = aug.apply(lambda r: to_float_batch(images[idx[r]], device), y, train.num_classes, draws, rows)
            if rows is not None:
                idx, y = idx[rows], y[rows]
            for h in all_hooks:
                if hasattr(h, "transform_batch"):
                    x, y_soft = h.transform_batch(x, y, y_soft, state)
            with autocast(device, cfg.amp):
                if loss_hook is not None:
                    per, logits = loss_hook.loss(net, x, y, y_soft, state)
                else:
                    logits = net(x)
                    per = per_sample_loss(logits, y, y_soft)
                loss = (per * weights[idx]).mean() if weights is not None else per.mean()
            opt.zero_grad(set_to_none=True)
            (loss if scale is None else loss * scale).backward()
            opt.step()
            state.index, state.loss, state.losses, state.logits = idx, loss.detach(), per.detach(), logits.detach()
            for h in all_hooks:
                if hasattr(h, "after_step"):
                    h.after_step(state)
            loss_sum += loss.detach().to(loss_sum.dtype) * len(idx)
            correct += (logits.argmax(1) == y).sum()
            seen += len(idx)
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        train_time += dt
        if parallel is not None:
            loss_sum, correct, seen = parallel.sum(loss_sum, correct, seen)
        loss_sum, correct, seen = loss_sum.item(), int(correct.item()), int(seen)
        if test is None:
            acc = float("nan")
        else:
            acc = evaluate(model, test, device, amp=cfg.amp) if parallel is None else parallel.evaluate(model, test, device, cfg.amp)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": 100.0 * correct / max(seen, 1),
                  "test_acc": acc, "epoch_seconds": dt}
        for h in all_hooks:
            if hasattr(h, "after_epoch"):
                h.after_epoch(epoch, record, state)
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", test_acc=f"{acc:.2f}")
        if ckpt is not None and (parallel is None or parallel.is_main):  # rank 0 writes for all
            with atomic_write(ckpt) as f:
                torch.save({"key": key, "epochs": cfg.epochs, "n": n, "model": model.state_dict(),
                            "opt": opt.state_dict(), "gen": gen.get_state(), "cpu_rng": torch.get_rng_state(),
                            "history": history, "epoch": epoch + 1, "train_time": train_time,
                            "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in hooks]}, f)
        if state.stop:
            break
    bar.close()
    accs = [h["test_acc"] for h in history]
    best = max(range(len(accs)), key=lambda i: accs[i]) if test is not None else len(accs) - 1
    config = asdict(cfg)
    if user_model is not None:
        config["model"] = f"custom:{type(user_model).__name__}"
    result = {
        "config": config, "device": str(device), "train_size": n,
        "test_size": len(test) if test is not None else 0, "history": history,
        "last_acc": accs[-1], "best_acc": accs[best], "best_epoch": best + 1,
        "train_seconds": train_time,
        "images_per_second": n * len(history) / max(train_time, 1e-9),
    }
    if hooks:
        result["hooks"] = [hook_spec(h) for h in hooks]
    if return_model:
        result["model"] = model
    return result


def _restore(ckpt, key, cfg, n, model, opt, gen, hooks):
    """Load a training checkpoint into model/opt/gen/hooks; returns (history, start_epoch, train_time)."""
    # RNG states must stay CPU tensors (set_state refuses CUDA ones); load_state_dict moves the rest.
    state = load_state(ckpt)  # weights_only: a planted file cannot run code; errors are one line
    if not isinstance(state, dict) or state.get("key") != key or state.get("n") != n:
        raise PoisonlabError(f"checkpoint {ckpt} belongs to another configuration; remove it or pick another path")
    if state["epochs"] != cfg.epochs and cfg.schedule != "constant":
        # The cosine/multistep learning rate depends on the total length, so continuing with another
        # epoch count would give a run that matches no uninterrupted one.
        raise PoisonlabError(f"checkpoint {ckpt} is of a {state['epochs']}-epoch {cfg.schedule} schedule; "
                             f"only a constant schedule can be extended to {cfg.epochs} epochs")
    if state["epoch"] > cfg.epochs:
        raise PoisonlabError(f"checkpoint {ckpt} already holds {state['epoch']} epochs > {cfg.epochs}")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["cpu_rng"])
    for h, hs in zip(hooks, state.get("hooks") or []):
        if hs is not None and hasattr(h, "load_state_dict"):
            h.load_state_dict(hs)
    return state["history"], state["epoch"], state["train_time"]


def mix_partial(protected: ImageSet, clean: ImageSet, fraction: float, seed: int = 0, clean_only=False) -> ImageSet:
    """Partial protection: a random `fraction` of the images come from `protected`, the rest from `clean`.

    The two sets must hold the same images in the same order (as written by `poisonlab protect`);
    they are aligned by file stem when both carry names. clean_only drops the protected part instead
    (the "clean only" baseline of seed 001 Table 6).
    """
    if not 0 <= fraction <= 1:
        raise PoisonlabError(f"protected fraction must be in [0, 1], got {fraction}")
    if protected.shape != clean.shape or len(protected) != len(clean):
        raise PoisonlabError("protected and clean sets differ in size or shape; they must hold the same images")
    if protected.names is not None and clean.names is not None:
        clean = clean.subset(match_stems(protected.names, clean.names, "the clean set"))
    if not torch.equal(protected.labels, clean.labels):
        raise PoisonlabError("protected and clean labels disagree")
    g = torch.Generator().manual_seed(seed)
    n_prot = int(round(fraction * len(clean)))
    chosen = torch.zeros(len(clean), dtype=torch.bool)
    chosen[torch.randperm(len(clean), generator=g)[:n_prot]] = True
    if clean_only:
        return clean.subset(torch.nonzero(~chosen).flatten())
    images = torch.where(chosen[:, None, None, None], protected.images, clean.images)
    return clean.with_images(images)
