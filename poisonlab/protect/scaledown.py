"""The scale-down rule: how to shrink a model-based protection's schedule without breaking the ratios the
method relies on.

Seed 001 (min-max-min) and REM make robust noise on a ResNet-18 surrogate over 5,000 SGD steps on 50,000
images, with noise PGD of 10 steps x 1.6/255 averaged over 5 augmentations and an adversary of 10 steps of
0.8/255 at 4/255. A CPU-scale run cannot afford that, and an earlier scale-down (5 noise steps of 2/255,
a 3-step adversary of 1.6/255) lost the robustness entirely: the noise could not reach the corners of its
box and the adversary it was made against was weaker than the victim's. A preset keeps these ratios:

1. noise travel: noise_steps x noise_step_size >= 2 x eps (the paper: 10 x 1.6/255 = 2 x 8/255), because
   REM and min-max-min restart their noise from a random point at every surrogate step. Under
   warm_start the noise is carried from one visit of an image to the next, so its travel adds up over
   the visits: counted over the visits after the learning-rate decay (passes x (1 - decay fraction),
   the stretch where the surrogate settles), that travel must still be >= 2 x eps, i.e. the noise can
   cross its box after the surrogate's last large change;
2. the generation adversary at least as strong as the victim's adversarial training: radius >= the
   victim's, steps >= the victim's, and travel (steps x step size) >= the victim's travel (an FGSM
   adversary counts as 1 step of 1.25 x its radius, so it is flagged against a multi-step victim);
3. expectation over augmentations kept: eot >= 2;
4. surrogate length counted in passes over the data (the paper: 5,000 x 128 / 50,000 = 12.8 passes, lr
   x0.1 after 40% of them), converted to steps for the data set at hand; at least MIN_PASSES.

`check` lists what a preset breaks, `enforce` refuses (strict) or warns with the reasons, and
`robust_recipe` builds a preset that keeps the rule for a given data size and victim.
"""

import math
import warnings
from dataclasses import dataclass

from .. import PoisonlabError
from ..budget import parse_budget
from ..registry import METHODS
from .interleaved import FGSM_ALPHA

PAPER_PASSES = 5000 * 128 / 50000  # 12.8
PAPER_DECAY_FRACTION = 2000 / 5000  # lr x0.1 after 40% of the steps
MIN_PASSES = 10.0
MIN_TRAVEL_RATIO = 2.0
MIN_EOT = 2
ROBUST_METHODS = ("rem", "minmaxmin")


class ScaleDownWarning(UserWarning):
    """A preset breaks the scale-down rule (see poisonlab.protect.scaledown)."""


@dataclass(frozen=True)
class VictimAT:
    """The adversarial training a protection must survive: L-inf radius, PGD steps and step size
    (default 2.5 x eps / steps, as poisonlab.train and torchattacks use)."""

    eps: float
    steps: int = 3
    alpha: float | None = None

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 2.5 * self.eps / max(self.steps, 1)

    @property
    def travel(self) -> float:
        return self.steps * self.step_size

    @classmethod
    def from_config(cls, adv_eps, adv_steps=10, adv_alpha=None):
        eps = parse_budget(adv_eps, "adv_eps")
        return cls(eps, int(adv_steps), parse_budget(adv_alpha, "adv_alpha") if adv_alpha is not None else None)


def passes(train_steps, batch_size, n) -> float:
    return train_steps * batch_size / max(n, 1)


def _b(params, key, default):
    return parse_budget(params.get(key, default), key)


def check(method: str, params: dict, n: int | None = None, victims=()) -> list[str]:
    """Reasons why `params` of `method` break the rule (empty when it keeps it).

    n: number of images the protection is made on (for the passes check); victims: the VictimATs the
    noise will be judged against (for the adversary check). Defaults are the method's own.
    """
    if method not in ROBUST_METHODS and method != "em":
        return []
    defaults = _defaults(METHODS.get(method))
    p = {k: v for k, v in {**defaults, **params}.items() if v is not None}
    eps = _b(p, "eps", 8 / 255)
    bad = []
    if method == "em":
        # EM warm-starts its noise from round to round, so its travel adds up over rounds; one pass must
        # still be able to cross the box once, or the first rounds leave it near its random start.
        travel = int(p.get("pgd_steps", 20)) * _b(p, "step_size", 0.8 / 255) if p.get("mode", "samplewise") == "samplewise" else None
        if travel is not None and travel < eps:
            bad.append(f"noise travel per pass {_lv(travel)} < eps {_lv(eps)} (pgd_steps x step_size)")
        return bad
    travel = int(p["noise_steps"]) * _b(p, "noise_step_size", 1.6 / 255)
    if p.get("warm_start"):
        if n:  # the noise is carried over visits: count its travel over the visits after the lr decay
            settle = max(int(p["train_steps"]) - int(p["lr_decay_every"]), 0)
            visits = passes(settle, int(p["batch_size"]), n)
            if visits * travel < MIN_TRAVEL_RATIO * eps - 1e-9:
                bad.append(f"warm-started noise travel {_lv(visits * travel)} over the {visits:.1f} visits after the lr "
                           f"decay ({_lv(travel)} per visit) < {MIN_TRAVEL_RATIO:g} x eps = {_lv(MIN_TRAVEL_RATIO * eps)}")
        elif travel <= 0:
            bad.append("warm-started noise never moves (noise_steps x noise_step_size = 0)")
    elif travel < MIN_TRAVEL_RATIO * eps - 1e-9:
        bad.append(f"noise travel {_lv(travel)} (noise_steps x noise_step_size) < {MIN_TRAVEL_RATIO:g} x eps = "
                   f"{_lv(MIN_TRAVEL_RATIO * eps)}: the noise restarts at random every step and cannot reach its box's corners")
    if int(p["eot"]) < MIN_EOT:
        bad.append(f"eot {int(p['eot'])} < {MIN_EOT}: noise gradients must be averaged over augmentations")
    if n:
        k = passes(int(p["train_steps"]), int(p["batch_size"]), n)
        if k < MIN_PASSES:
            bad.append(f"surrogate trains {k:.1f} passes over {n} images < {MIN_PASSES:g} (the paper: {PAPER_PASSES:.1f})")
    adv_eps, adv_steps = _b(p, "adv_eps", 4 / 255), int(p["adv_steps"])
    adv_travel = adv_steps * _b(p, "adv_step_size", 0.8 / 255)
    if p.get("adversary") == "fgsm":
        adv_steps, adv_travel = 1, FGSM_ALPHA * adv_eps
    for v in victims:
        if v.eps >= eps:
            continue  # rho_a >= rho_u: the method itself expects no protection there (REM; seed 001 Sec. 3.2)
        if adv_eps < v.eps - 1e-9:
            bad.append(f"generation adversary radius {_lv(adv_eps)} < the victim's AT radius {_lv(v.eps)}")
        if adv_steps < v.steps:
            bad.append(f"generation adversary has {adv_steps} steps < the victim's {v.steps}")
        if adv_travel < v.travel - 1e-9:
            bad.append(f"generation adversary travel {_lv(adv_travel)} < the victim's {_lv(v.travel)} "
                       f"({v.steps} steps of {_lv(v.step_size)})")
    return list(dict.fromkeys(bad))


def enforce(method: str, params: dict, n: int | None = None, victims=(), strict=False, where="preset") -> list[str]:
    """Refuse (strict) or warn about a preset that breaks the rule; returns the reasons."""
    bad = check(method, params, n, victims)
    if bad:
        msg = f"{where}: {method} breaks the scale-down rule: " + "; ".join(bad)
        if strict:
            raise PoisonlabError(msg)
        warnings.warn(msg, ScaleDownWarning, stacklevel=2)
    return bad


def victims_of(train_kws) -> list:
    """The L-inf adversarial trainings among TrainConfig keyword sets (standard training and L2 AT are
    not a radius the L-inf noise is made against)."""
    out = []
    for kw in train_kws:
        if kw.get("adv_eps") and kw.get("adv_norm", "linf") == "linf":
            v = VictimAT.from_config(kw["adv_eps"], kw.get("adv_steps", 10), kw.get("adv_alpha"))
            if v not in out:
                out.append(v)
    return out


def check_grid(cfg, parse_defense, strict=False) -> dict:
    """Apply the rule to a benchmark grid config (poisonlab.bench.config.GridConfig): every robust
    method at every budget, against the grid's victims that train with L-inf AT (parse_defense: the
    countermeasure parser, passed in so that methods never import defenses). Returns the reasons by
    (method, budget)."""
    victims, found = {}, {}
    for cell in cfg.cells():
        if cell.method in ROBUST_METHODS:
            kw = parse_defense(cell.defense).configure(dict(cfg.train))
            victims.setdefault((cell.method, cell.budget), []).append(kw)
    for (method, budget), kws in victims.items():
        bad = enforce(method, cfg.method_options(method, budget), n=cfg.data.get("train_subset"),
                      victims=victims_of(kws), strict=strict, where=f"{cfg.name}")
        if bad:
            found[(method, budget)] = bad
    return found


def robust_recipe(n: int, victim: VictimAT, *, eps=8 / 255, noise_steps=5, eot=MIN_EOT,
                  surrogate_passes=PAPER_PASSES, batch_size=128, **extra) -> dict:
    """REM / min-max-min settings that keep the rule for n images and the strongest victim AT.

    Noise: noise_steps of 2 x eps / noise_steps (travel exactly 2 x eps); adversary: the victim's radius,
    steps and step size; surrogate: surrogate_passes passes, lr x0.1 after 40% of them (the paper's ratio).
    """
    eps = parse_budget(eps, "eps")
    steps = max(1, math.ceil(surrogate_passes * n / batch_size))
    recipe = dict(eps=eps, batch_size=batch_size, train_steps=steps,
                  lr_decay_every=max(1, round(steps * PAPER_DECAY_FRACTION)),
                  noise_steps=noise_steps, noise_step_size=MIN_TRAVEL_RATIO * eps / noise_steps, eot=eot,
                  adv_eps=victim.eps, adv_steps=victim.steps, adv_step_size=victim.step_size, **extra)
    return recipe


def describe(params: dict, n: int | None = None) -> str:
    """One line naming the ratios of a robust preset (for docs and logs)."""
    eps = _b(params, "eps", 8 / 255)
    t = int(params["noise_steps"]) * _b(params, "noise_step_size", 0)
    a = int(params["adv_steps"]) * _b(params, "adv_step_size", 0)
    k = f", {passes(int(params['train_steps']), int(params.get('batch_size', 128)), n):.1f} passes" if n else ""
    warm = " per visit, warm start" if params.get("warm_start") else ""
    adv = (f"FGSM at {_lv(_b(params, 'adv_eps', 0))} (random start, 1 step of {FGSM_ALPHA:g} x eps)"
           if params.get("adversary") == "fgsm" else
           f"{_lv(_b(params, 'adv_eps', 0))} with {params['adv_steps']} x {_lv(_b(params, 'adv_step_size', 0))} (travel {_lv(a)})")
    return (f"noise {params['noise_steps']} x {_lv(_b(params, 'noise_step_size', 0))} = {t / eps:.1f} x eps{warm}, "
            f"eot {params['eot']}; adversary {adv}; {params['train_steps']} steps{k}")


def _defaults(cls) -> dict:
    import inspect
    out = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            for name, prm in inspect.signature(klass.__init__).parameters.items():
                if prm.default is not inspect.Parameter.empty:
                    out[name] = prm.default
    return out


def _lv(x: float) -> str:
    return f"{x * 255:.2f}/255"
