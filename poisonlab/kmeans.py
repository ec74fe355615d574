"""Batched k-means in torch (Lloyd's algorithm with k-means++ seeding), on any device.

    centers, assign, inertia = kmeans(features, k, seed=0)

Used to cluster a surrogate's feature space (Unlearnable Clusters). Distances are computed in chunks, so
memory stays O(chunk * k) whatever the number of points; the result is deterministic under the seed.
"""

import torch

from . import PoisonlabError


def _sq_dists(x, centers, chunk):
    """(N, k) squared Euclidean distances, chunk rows at a time (float32 for the norm expansion)."""
    c = centers.float()
    cn = (c * c).sum(1)
    out = []
    for s in range(0, len(x), chunk):
        xb = x[s:s + chunk].float()
        out.append(((xb * xb).sum(1, keepdim=True) - 2 * xb @ c.T + cn).clamp_(min=0))
    return torch.cat(out)


def kmeans_pp(x, k, gen, chunk=8192):
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each new center is drawn with probability
    proportional to the squared distance to the nearest center chosen so far."""
    n = len(x)
    first = int(torch.randint(n, (1,), generator=gen))
    centers = x[first:first + 1].float().clone()
    d2 = _sq_dists(x, centers, chunk)[:, 0]
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:  # fewer distinct points than k: repeat one (its cluster stays empty and is re-seeded)
            nxt = int(torch.randint(n, (1,), generator=gen))
        else:
            nxt = int(torch.multinomial((d2 / total).cpu(), 1, generator=gen))
        centers = torch.cat([centers, x[nxt:nxt + 1].float()])
        d2 = torch.minimum(d2, _sq_dists(x, centers[-1:], chunk)[:, 0])
    return centers


def lloyd(x, centers, max_iter=100, tol=1e-4, chunk=8192):
    """Alternate assignment and mean updates until the centers move less than tol (relative to the data's
    variance) or the assignment stops changing. An emptied cluster is re-seeded at the point farthest from
    its center, so all k clusters stay in use."""
    x = x.float()
    k = len(centers)
    scale = float(x.var(0).mean()) * x.shape[1] or 1.0
    assign = None
    for _ in range(max_iter):
        d2 = _sq_dists(x, centers, chunk)
        new = d2.argmin(1)
        counts = torch.bincount(new, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, new, x)
        moved = centers.clone()
        full = counts > 0
        moved[full] = sums[full] / counts[full].unsqueeze(1)
        if not bool(full.all()):
            far = d2.gather(1, new[:, None])[:, 0].argsort(descending=True)
            for j, p in zip(torch.nonzero(~full).flatten().tolist(), far.tolist()):
                moved[j] = x[p]
                new[p] = j
        shift = float(((moved - centers) ** 2).sum())
        stable = assign is not None and torch.equal(new, assign)
        centers, assign = moved, new
        if stable or shift <= tol * scale:
            break
    d2 = _sq_dists(x, centers, chunk)
    assign = d2.argmin(1)
    inertia = float(d2.gather(1, assign[:, None]).sum())
    return centers, assign, inertia


def kmeans(x: torch.Tensor, k: int, *, n_init: int = 3, max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
           chunk: int = 8192):
    """Cluster the rows of x (N, D) into k groups. Returns (centers (k, D), assign (N,), inertia).

    The best of n_init k-means++ restarts (lowest within-cluster sum of squares) is kept.
    """
    if x.ndim != 2:
        raise PoisonlabError(f"kmeans expects (N, D) features, got shape {tuple(x.shape)}")
    k, n_init = int(k), int(n_init)
    if not 1 <= k <= len(x):
        raise PoisonlabError(f"cannot form {k} clusters from {len(x)} points")
    if n_init < 1:
        raise PoisonlabError("n_init must be >= 1")
    if not torch.isfinite(x).all():
        raise PoisonlabError("kmeans: the features contain NaN or inf")
    gen = torch.Generator().manual_seed(int(seed))
    best = None
    for _ in range(n_init):
        run = lloyd(x, kmeans_pp(x, k, gen, chunk), max_iter, tol, chunk)
        if best is None or run[2] < best[2]:
            best = run
    return best
