"""Victim training: standard and PGD adversarial training, SGD schedules, clean test accuracy per epoch.

The whole uint8 data set sits on the device as one tensor; batches are sliced, converted and augmented
there. Runs are deterministic under a seed (on CPU; cuDNN may add tiny nondeterminism on GPU) and can
checkpoint every epoch and resume.
"""

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import PoisonlabError
from .attacks import make_pgd
from .augment import Augment
from .budget import parse_budget
from .data import ImageSet
from .fileio import atomic_write
from .models import create_model
from .runtime import autocast, pick_device, prepare_model, seed_everything, to_device_images


@dataclass
class TrainConfig:
    model: str = "smallcnn"
    width: float = 1.0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | multistep | constant
    augment: str = "standard"  # see Augment.parse
    adv_eps: float = 0.0  # 0 = standard training
    adv_norm: str = "linf"
    adv_steps: int = 10
    adv_alpha: float | None = None  # default 2.5 * eps / steps
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    defense: str = ""  # training-time countermeasure hook, e.g. "ueraser" (poisonlab.defenses), applied after augment
    extra: dict = field(default_factory=dict)  # free-form labels carried into results (e.g. countermeasure)

    def __post_init__(self):
        self.adv_eps = parse_budget(self.adv_eps, "adv_eps", maximum=1.0 if self.adv_norm == "linf" else None)
        if self.adv_alpha is not None:
            self.adv_alpha = parse_budget(self.adv_alpha, "adv_alpha")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise PoisonlabError("epochs and batch_size must be >= 1 and lr > 0")
        if self.schedule not in ("cosine", "multistep", "constant"):
            raise PoisonlabError(f"unknown schedule {self.schedule!r} (cosine, multistep, constant)")
        Augment.parse(self.augment)  # validate early
        if self.defense:
            from .defenses import train_time_defense
            train_time_defense(self.defense)

    def key(self) -> str:
        d = asdict(self)
        if not d["defense"]:
            d.pop("defense")  # keep the keys of runs made before the field existed
        return _digest(d)


def _digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resume_key(cfg: TrainConfig) -> str:
    """Checkpoint identity: the configuration less the epoch count, so a constant-schedule run can be extended."""
    d = asdict(cfg)
    d.pop("epochs")
    return _digest(d)


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
        x = to_device_images(data.images[i:i + batch_size], device).float().div_(255)
        with autocast(device, amp):
            pred = model(x).argmax(1)
        correct += (pred.cpu() == data.labels[i:i + batch_size]).sum().item()
    return 100.0 * correct / max(len(data), 1)


def soft_cross_entropy(logits, y_soft):
    return -(y_soft * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def train_victim(train: ImageSet, test: ImageSet | None, cfg: TrainConfig, progress=True,
                 checkpoint: str | Path | None = None, return_model=False):
    """Train cfg.model on train, report clean accuracy on test after every epoch.

    Returns a dict with history, last/best accuracy and throughput (and the model if asked).
    With checkpoint set, state is saved atomically after every epoch and a rerun resumes from it.
    """
    if len(train) == 0:
        raise PoisonlabError("the training set is empty")
    if test is not None and test.shape != train.shape:
        raise PoisonlabError(f"test images {test.shape} do not match training images {train.shape}")
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model = prepare_model(create_model(cfg.model, train.num_classes, train.shape[0], cfg.width), device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.momentum > 0)
    aug = Augment.parse(cfg.augment)
    tdef = None
    if cfg.defense:
        from .defenses import train_time_defense
        tdef = train_time_defense(cfg.defense)
    attack = None
    if cfg.adv_eps > 0:
        attack = make_pgd(cfg.adv_norm, cfg.adv_eps, steps=cfg.adv_steps, alpha=cfg.adv_alpha)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    images, labels = train.images.to(device), train.labels.to(device)
    n = len(train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    history, start_epoch, train_time = [], 0, 0.0

    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        # RNG states must stay CPU tensors (set_state refuses CUDA ones); load_state_dict moves the rest.
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated or foreign file: a user error, not a crash
            raise PoisonlabError(f"cannot read checkpoint {ckpt}: {e}") from None
        if not isinstance(state, dict) or state.get("key") != _resume_key(cfg) or state.get("n") != n:
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
        history, start_epoch, train_time = state["history"], state["epoch"], state["train_time"]

    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, disable=not progress, unit="batch",
               desc=f"{cfg.model}{' AT ' + str(round(cfg.adv_eps * 255, 2)) + '/255' if attack else ''}",
               dynamic_ncols=True, leave=False)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            step = epoch * steps_per_epoch + b
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step, total)
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = images[idx].float().div_(255)
            x = x.contiguous(memory_format=torch.channels_last) if device.type != "mps" else x
            y = labels[idx]
            x, y_soft = aug(x, y, train.num_classes, gen)
            if attack is not None:
                model.eval()  # attack with frozen BN statistics; train on the result
                with autocast(device, cfg.amp):
                    target = y_soft if y_soft is not None else y
                    attack.loss_fn = soft_cross_entropy if y_soft is not None else F.cross_entropy
                    x = x + attack(model, x, target, gen=gen)
                model.train()
            with autocast(device, cfg.amp):
                if tdef is not None:  # training-time countermeasure (e.g. UEraser): its own forward + loss
                    loss, logits = tdef.loss(model, x, y, y_soft, gen)
                else:
                    logits = model(x)
                    loss = soft_cross_entropy(logits, y_soft) if y_soft is not None else F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(idx)
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        train_time += dt
        acc = evaluate(model, test, device, amp=cfg.amp) if test is not None else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                        "test_acc": acc, "epoch_seconds": dt})
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", test_acc=f"{acc:.2f}")
        if ckpt is not None:
            with atomic_write(ckpt) as f:
                torch.save({"key": _resume_key(cfg), "epochs": cfg.epochs, "n": n, "model": model.state_dict(),
                            "opt": opt.state_dict(), "gen": gen.get_state(), "cpu_rng": torch.get_rng_state(),
                            "history": history, "epoch": epoch + 1, "train_time": train_time}, f)
    bar.close()
    accs = [h["test_acc"] for h in history]
    best = max(range(len(accs)), key=lambda i: accs[i]) if test is not None else len(accs) - 1
    result = {
        "config": asdict(cfg), "device": str(device), "train_size": n,
        "test_size": len(test) if test is not None else 0, "history": history,
        "last_acc": accs[-1], "best_acc": accs[best], "best_epoch": best + 1,
        "train_seconds": train_time,
        "images_per_second": n * len(history) / max(train_time, 1e-9),
    }
    if return_model:
        result["model"] = model
    return result


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
        stems = {str(Path(n).with_suffix("")): i for i, n in enumerate(clean.names)}
        try:
            order = torch.tensor([stems[str(Path(n).with_suffix(""))] for n in protected.names])
        except KeyError as e:
            raise PoisonlabError(f"protected image {e} has no clean counterpart") from None
        clean = clean.subset(order)
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
