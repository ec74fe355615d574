"""Which samples to poison: random, largest gradient norm, or largest (first-order) influence on a target.

The lecture's influence score I(z) = -H^-1 grad L(z) (Koh & Liang 2017; Koh, Steinhardt & Liang 2022) needs
an inverse Hessian; for deep nets we use the standard cheap proxies: the gradient norm ||grad_theta L(z)||
(how much one step on z moves the model) and the identity-Hessian influence <grad L(z), grad L_target>
(how much a step on z lowers the attacker's target loss, as in TracIn, Pruthi et al. 2020). Attacks that
pick base images take `select="random" | "gradient-norm" | "influence"`.
"""

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from .. import PoisonlabError
from ..runtime import to_float_batch

SELECTIONS = ("random", "gradient-norm", "influence")


def per_sample_grads(model, x, y, batch_size=64):
    """Flattened per-sample gradients of the cross-entropy w.r.t. all trainable parameters, (N, P)."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v for k, v in model.named_buffers()}

    def loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi[None],))
        return F.cross_entropy(out.float(), yi[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    rows = []
    model.eval()
    for i in range(0, len(x), batch_size):
        gi = g(params, x[i:i + batch_size], y[i:i + batch_size])
        rows.append(torch.cat([t.flatten(1) for t in gi.values()], 1))
    return torch.cat(rows)


def flat_grad(loss, model):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def select_indices(candidates, k, *, how="random", model=None, images=None, labels=None, target_loss=None,
                   gen=None):
    """Pick k of `candidates` (indices into images/labels, uint8 CPU tensors).

    gradient-norm: largest ||grad L(x_i, y_i)||; influence: largest <grad L(x_i, y_i), grad target_loss>
    (a training step on x_i then lowers the target loss most). Both need `model`; influence also
    `target_loss(model) -> scalar`."""
    k = min(int(k), len(candidates))
    if how == "random":
        return candidates[torch.randperm(len(candidates), generator=gen)[:k]].sort().values
    if how not in SELECTIONS:
        raise PoisonlabError(f"unknown selection {how!r}; use {', '.join(SELECTIONS)}")
    if model is None:
        raise PoisonlabError(f"selection {how!r} needs a (surrogate) model")
    device = next(model.parameters()).device
    x = to_float_batch(images[candidates], device)
    g = per_sample_grads(model, x, labels[candidates].to(device))
    if how == "gradient-norm":
        score = g.norm(dim=1)
    else:
        if target_loss is None:
            raise PoisonlabError("influence selection needs a target (the attacker's objective)")
        model.eval()
        score = g @ flat_grad(target_loss(model), model)
    return candidates[score.cpu().topk(k).indices].sort().values
