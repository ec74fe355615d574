"""The interleaved surrogate loop shared by REM and min-max-min (the official codes' structure).

Every training step on a minibatch: (1) recompute the batch's protective noise delta_u with the current
surrogate (method-specific: `noise_update`); (2) adversarial training of the surrogate on
aug(x + delta_u) + delta_a with ||delta_a|| <= adv_eps; (3) optionally an extra loss term
(`extra_loss`, e.g. the average randomness constraint). After the last step the noise of the whole
data set is regenerated with the final surrogate.
"""

import torch

from .. import PoisonlabError
from ..budget import parse_budget
from ..distributed import SharedDraws
from ..runtime import autocast
from .surrogate import Batches, SurrogateMethod, cross_entropy, quantize


ADVERSARIES = ("pgd", "fgsm")
FGSM_ALPHA = 1.25  # FGSM step = 1.25 x adv_eps after a uniform random start (Wong et al., ICLR 2020)
# Options added after manifests and checkpoint keys existed: recorded only when set (see params()).
_LATER_OPTIONS = {"warm_start": False, "adversary": "pgd"}


class InterleavedMethod(SurrogateMethod):
    """Shared parameters: train_steps surrogate updates (step-decayed lr: x lr_decay every
    lr_decay_every steps); noise PGD (noise_steps, noise_step_size, random start, eot augmented copies);
    adversarial PGD (adv_eps, adv_steps, adv_step_size).

    Cheaper generation (issue 15; both off by default, measured in docs/scale.md):
    warm_start: each noise update starts from the image's stored noise (uniform random in the box before
    its first visit) instead of a fresh random point, so noise_steps is a short refresh and the noise's
    travel adds up over the image's visits; the final pass refreshes the stored noise the same way.
    adversary: "pgd" (adv_steps of adv_step_size) or "fgsm": one step of 1.25 x adv_eps from a uniform
    random start in the adv_eps ball ("Fast is better than free", Wong, Rice, Kolter, ICLR 2020);
    adv_steps and adv_step_size are then unused.

    Data-parallel under torchrun (set `parallel`, a poisonlab.distributed.DataParallel): each rank computes
    the noise and adversary of its contiguous share of every global batch on one process's random stream,
    the surrogate steps with DDP (the global batch's mean loss; BatchNorm over the global batch), the new
    noise is gathered on every rank, the final pass likewise; rank 0 writes the checkpoints, which resume
    with any number of processes. It follows one process's run up to floating-point summation order
    (tests/test_distributed_generation.py).
    """

    data_parallel = True

    def __init__(self, eps=None, seed=0, device="auto", surrogate="resnet18", width=1.0, batch_size=128,
                 lr=0.1, momentum=0.9, weight_decay=5e-4, augment=True, eot=5, train_steps=5000,
                 lr_decay_every=2000, lr_decay=0.1, noise_steps=10, noise_step_size=1.6 / 255,
                 adv_eps=4 / 255, adv_steps=10, adv_step_size=0.8 / 255, *, warm_start: bool = False,
                 adversary: str = "pgd"):
        super().__init__(eps, seed, device, surrogate, width, batch_size, lr, momentum, weight_decay, augment, eot)
        self.train_steps, self.lr_decay_every, self.lr_decay = int(train_steps), int(lr_decay_every), float(lr_decay)
        self.noise_steps, self.noise_step_size = int(noise_steps), parse_budget(noise_step_size, "noise_step_size")
        self.adv_eps, self.adv_steps = parse_budget(adv_eps, "adv_eps"), int(adv_steps)
        self.adv_step_size = parse_budget(adv_step_size, "adv_step_size")
        if adversary not in ADVERSARIES:
            raise PoisonlabError(f"adversary must be one of {ADVERSARIES}, got {adversary!r}")
        self.warm_start, self.adversary = bool(warm_start), adversary
        if self.adv_eps >= self.eps:
            # REM's analysis (and seed 001, Sec. 3.2): with rho_a >= rho_u the noise cannot suppress learning.
            raise PoisonlabError(f"adv_eps ({self.adv_eps * 255:.1f}/255) must be smaller than eps ({self.eps * 255:.1f}/255)")

    def params(self) -> dict:
        # Left out at their defaults, so that runs made before these options existed keep their manifests'
        # settings and checkpoint keys (protect's resume key, the demo's reuse check).
        p = super().params()
        for k, default in _LATER_OPTIONS.items():
            if p.get(k) == default:
                p.pop(k)
        return p

    @property
    def surrogate_info(self):
        return {"model": self.surrogate, "width": self.width, "train_steps": self.train_steps,
                "adversarial_training_eps": self.adv_eps}

    # ----- method-specific parts ------------------------------------------------------------------
    def noise_update(self, model, x, y, gen, delta=None):
        """The batch's new noise; delta: where to start (the stored noise under warm_start, else None:
        a fresh random start)."""
        raise NotImplementedError

    def extra_loss(self, model, x, y, gen):
        return None

    # ----- the shared loop -----------------------------------------------------------------------------
    def perturb(self, data, ckpt):
        model, opt, gen, images, labels = self.setup(data)
        par = self.parallel  # under torchrun: this rank's share of every batch (see _share_work)
        self.noise_pgd = self.linf(self.eps, self.noise_step_size, self.noise_steps, True, self.eot, self.aug)
        if self.adversary == "fgsm":
            self.adv_pgd = self.linf(self.adv_eps, FGSM_ALPHA * self.adv_eps, 1, False)
        else:
            self.adv_pgd = self.linf(self.adv_eps, self.adv_step_size, self.adv_steps, False)
        self._one = self.adv_pgd  # the unshared adversary, for held-out diagnostics
        noise = torch.zeros(images.shape, device=self.device_)
        if self.warm_start:  # the first visit starts where a restart would: uniform in the box
            noise = quantize(self.noise_pgd.init_delta(noise, gen))
        draws = None if par is None else self._share_work(gen, len(images))
        if par is not None and not par.is_main:
            ckpt = ckpt.reader()  # rank 0 writes for all
        batches = Batches(len(images), self.batch_size, gen)
        state = ckpt.load() or {}
        start = 0
        if state:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            noise.copy_(state["noise"])
            batches.load(state["batches"])
            start = state["step"]
        self.history, self._pending = state.get("history", []), []
        net = self.forward_model(model)
        train_net = net
        if par is not None:
            par.barrier()  # every rank has read the checkpoint before rank 0 may write the next
            train_net = par.wrap(model)  # DDP, BatchNorm over the global batch; noise and adversary use net
        measure = par is None or par.is_main
        with self.bar(self.train_steps, start, f"{self.name} surrogate") as bar:
            for step in range(start, self.train_steps):
                for g in opt.param_groups:
                    g["lr"] = self.lr * self.lr_decay ** (step // max(self.lr_decay_every, 1))
                idx = batches.next()
                mine = idx if draws is None else idx[draws.set(len(idx))]
                x, y = self.batch(images, mine), labels[mine]
                logged = step % 20 == 0 or step == self.train_steps - 1
                old = noise[mine] if self.warm_start or logged else None  # a gather only when it is used
                with autocast(self.device_):
                    net.eval()  # noise and adversary are computed with frozen BN statistics
                    new = quantize(self.noise_update(net, x, y, gen, old if self.warm_start else None))
                    noise[idx] = new if draws is None else draws.gather(new)  # every rank keeps all the noise
                    x_def = x + new
                    if self.aug is not None:
                        x_def = self.aug(x_def, gen)
                    x_adv = x_def + self.adv_pgd(net, x_def, y, gen=gen)
                    train_net.train()
                    logits = train_net(x_adv)
                    loss = cross_entropy(logits, y)
                    extra = self.extra_loss(train_net, x, y, gen)
                    total = loss if extra is None else loss + extra
                opt.zero_grad(set_to_none=True)
                (total if draws is None else total * draws.scale).backward()  # DDP's average: the global mean
                opt.step()
                if logged:
                    self._log(step + 1, loss, logits, y, extra, new, old, draws)
                if measure and self.holdout is not None and self.diagnostic_due(step + 1, self.train_steps):
                    self._flush_history(bar)
                    self.history.append({"step": step + 1, **self.heldout_accuracy(net)})
                bar.update(1)
                ckpt.save(lambda: self._state(model, opt, gen, noise, step + 1, "train", batches, bar))
        net.eval()
        if state.get("stage") != "final":
            state = self._state(model, opt, gen, noise, self.train_steps, "train", batches)
            ckpt.save(state, force=True)
        moved = []

        def final(x, y, idx):
            old = noise[idx]
            new = self.noise_update(net, x, y, gen, old if self.warm_start else None)
            change = (quantize(new.clone()) - old).abs() * 255
            moved.append(torch.stack([change.sum(), change.new_tensor(change.numel())]))
            return new

        noise = self.noise_pass(images, labels, noise, final, ckpt, state, "final", f"{self.name} final noise",
                                draws=draws)
        # the mean change over every image this pass ran (summed over the ranks): one value for any world size
        change, count = torch.stack(moved).sum(0) if moved else torch.zeros(2)
        if draws is not None:
            change, count = par.sum(change, count)
        if measure:
            self.record_diagnostics(net, images, labels, noise, self.history)
            if count:  # mean change of the final pass over the noise the surrogate loop left (images run here)
                self.diagnostics_["final_pass_change_levels"] = round((change / count).item(), 3)
        return noise.cpu()

    def _share_work(self, gen, n):
        """Data-parallel generation: the PGDs and augmentation of this rank's share draw one process's random
        stream for the global batch (poisonlab.distributed.SharedDraws)."""
        if min(self.batch_size, n) < self.parallel.world:
            raise PoisonlabError(f"batch_size {min(self.batch_size, n)} is smaller than the {self.parallel.world} "
                                 "processes: every rank needs a share of every batch")
        draws = SharedDraws(self.parallel, gen)
        self.noise_pgd, self.adv_pgd = draws.pgd(self.noise_pgd), draws.pgd(self.adv_pgd)
        self.aug = draws.augment(self.aug)
        return draws

    def diagnostic_attack(self):
        return getattr(self, "_one", None) or super().diagnostic_attack()

    def _log(self, step, loss, logits, y, extra, new, old, draws):
        """Kept on the device; read at checkpoints and at the end, so the loop never waits on the host.
        Data-parallel: the global batch's means (the shares' means weighted by their sizes; one all-reduce)."""
        acc = (logits.argmax(1) == y).float().mean() * 100
        moved = (new - old).abs().mean() * 255  # how far a visit moves the noise, in levels
        values = [loss.detach(), acc, moved] + ([] if extra is None else [extra.detach()])
        if draws is not None:
            values = [v / draws.n for v in draws.parallel.sum(*(v * len(y) for v in values))]
        loss, acc, moved, *extra = values
        self._pending.append((step, loss, acc, extra[0] if extra else None, moved))

    def _flush_history(self, bar=None):
        """Move the logged device values into the history (one host sync for all of them)."""
        for step, loss, acc, extra, moved in self._pending:
            rec = {"step": step, "loss": round(loss.item(), 4), "adv_acc": round(acc.item(), 2),
                   "noise_change_levels": round(moved.item(), 3)}
            if extra is not None:
                rec["extra"] = round(extra.item(), 5)
            self.history.append(rec)
        if self._pending and bar is not None:
            bar.set_postfix(loss=self.history[-1]["loss"], acc=self.history[-1]["adv_acc"])
        self._pending = []

    def _state(self, model, opt, gen, noise, step, stage, batches, bar=None):
        self._flush_history(bar)
        return {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                "noise": noise.cpu(), "step": step, "stage": stage, "history": list(self.history),
                "batches": batches.state()}
