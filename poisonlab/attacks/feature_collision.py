"""Feature-space clean-label attacks: feature collision ("Poison Frogs") and convex polytope.

Both move base images of the adversarial class, within a small budget, until the victim's feature extractor
maps them onto (Poison Frogs) or around (convex polytope) the target's features; a classifier retrained on
those features then labels the target as the base class. They are strongest in the transfer-learning
setting (frozen extractor, retrained linear head), which is how they are evaluated.
"""

import torch

from .. import PoisonlabError
from .attack import register_attack
from .evaluate import penultimate
from .targeted import TargetedAttack


def extractors(models):
    return [penultimate(m).eval() for m in models]


@register_attack
class PoisonFrogs(TargetedAttack):
    """Feature collision (Shafahi, Huang, Najibi, Suciu, Studer, Dumitras & Goldstein, "Poison frogs!
    Targeted clean-label poisoning attacks on neural networks", NeurIPS 2018).

        x_p = argmin_x ||f(x) - f(x_t)||^2 + beta ||x - x_b||^2

    by the paper's forward-backward splitting: a gradient step on the feature term, then the proximal step
    x = (x_hat + lr*beta*x_b) / (1 + lr*beta) of the image term; the step shrinks when the objective grows.
    beta = beta0 * dim(f)^2 / dim(x_b)^2 with beta0 = 0.25: the paper's rule, whose 2048 is the feature
    dimension of its InceptionV3 extractor, here the extractor's own feature dimension; one poison per
    target in the transfer setting (num_poisons=1); `opacity` > 0 first blends the target into the bases
    (the paper's watermarking, 30% for end-to-end training). eps (default 1: unbounded, as in the paper)
    adds an L-inf projection around the clean base, watermark included, so that the attack can be compared
    with a same-budget control. `lr` is the first
    step's largest pixel move (the gradient is scaled by its own max once, then kept fixed)."""

    name = "poison-frogs"
    paper = "Shafahi et al. NeurIPS 2018"
    default_eps = 1.0

    def __init__(self, *, iterations=1000, beta0=0.25, lr=2 / 255, opacity=0.0, num_poisons=1, **kw):
        super().__init__(num_poisons=num_poisons, **kw)
        self.iterations, self.beta0, self.lr, self.opacity = int(iterations), float(beta0), float(lr), float(opacity)
        if not 0 <= self.opacity < 1:
            raise PoisonlabError(f"opacity must lie in [0, 1), got {opacity}")

    def craft_target(self, models, x_p, y_p, x_t, y_adv, gen):
        f = extractors(models)[0]
        with torch.no_grad():
            ft = f(x_t)
        base = (1 - self.opacity) * x_p + self.opacity * x_t if self.opacity else x_p
        beta = self.beta0 * float(ft.shape[1]) ** 2 / float(x_p[0].numel()) ** 2
        x = base.clone()
        step, prev = None, None
        for _ in range(self.iterations):
            x.requires_grad_(True)
            obj = ((f(x) - ft) ** 2).sum(1)
            g, = torch.autograd.grad(obj.sum(), x)
            with torch.no_grad():
                if step is None:  # per-poison step so the first move is lr in the largest pixel
                    step = self.lr / g.flatten(1).abs().max(1).values.clamp_min(1e-12).view(-1, 1, 1, 1)
                total = obj + beta * ((x - base) ** 2).flatten(1).sum(1)
                if prev is not None:  # the paper's safeguard: shrink the step where the objective grew
                    step = torch.where((total > prev).view(-1, 1, 1, 1), step * 0.5, step)
                prev = total
                x_hat = x - step * g
                x = (x_hat + step * beta * base) / (1 + step * beta)
                x = x_p + self.project(x_p, x - x_p)
        with torch.no_grad():
            dist = ((f(x) - ft).norm(dim=1) / ft.norm(dim=1).clamp_min(1e-12)).mean()
        self.last_diagnostics = {"feature_distance": round(float(dist), 4)}
        return (x - x_p).detach()


def project_simplex(v):
    """Euclidean projection of each row of v onto the probability simplex (Duchi et al. 2008)."""
    u, _ = torch.sort(v, dim=1, descending=True)
    css = u.cumsum(1) - 1
    k = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    rho = ((u - css / k) > 0).to(v.dtype).mul(k).argmax(1, keepdim=True)
    theta = css.gather(1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


@register_attack
class ConvexPolytope(TargetedAttack):
    """Convex polytope attack (Zhu, Huang, Shafahi, Li, Taylor, Studer & Goldstein, "Transferable clean-label
    poisoning attacks on deep neural nets", ICML 2019): k poisons whose features, in every network of an
    ensemble, hold the target's features inside their convex hull:

        min_{x_p, c} 1/m sum_i  0.5 ||phi_i(x_t) - sum_j c_ij phi_i(x_p^j)||^2 / ||phi_i(x_t)||^2,
        c_i on the simplex,  ||x_p^j - x_b^j||_inf <= eps

    alternating projected-gradient steps on the coefficients with Adam steps on the poisons. Paper defaults:
    k = 5 poisons, eps = 0.1, Adam lr 0.04, 4000 iterations; the ensemble is `ensemble` surrogates (or a
    list given as `model`)."""

    name = "convex-polytope"
    paper = "Zhu et al. ICML 2019"
    default_eps = 0.1
    ensemble_default = 2

    def __init__(self, *, iterations=4000, lr=0.04, num_poisons=5, **kw):
        super().__init__(num_poisons=num_poisons, **kw)
        self.iterations, self.lr = int(iterations), float(lr)

    def craft_target(self, models, x_p, y_p, x_t, y_adv, gen):
        fs = extractors(models)
        with torch.no_grad():
            fts = [f(x_t)[0] for f in fs]
        k = len(x_p)
        coeffs = [torch.full((k,), 1.0 / k, device=x_p.device) for _ in fs]
        delta = torch.zeros_like(x_p, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        for _ in range(self.iterations):
            loss = 0.0
            for i, (f, ft) in enumerate(zip(fs, fts)):
                phi = f(x_p + delta)
                with torch.no_grad():  # coefficient step: projected gradient with step 1/L
                    lip = torch.linalg.matrix_norm(phi @ phi.T, ord=2).clamp_min(1e-12)
                    c = coeffs[i] - (phi @ (coeffs[i] @ phi - ft)) / lip
                    coeffs[i] = project_simplex(c[None])[0]
                loss = loss + 0.5 * ((ft - coeffs[i] @ phi) ** 2).sum() / (ft ** 2).sum().clamp_min(1e-12)
            loss = loss / len(fs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                delta.copy_(self.project(x_p, delta))
        self.last_diagnostics = {"polytope_loss": round(float(loss.detach()), 5)}
        return delta.detach()
