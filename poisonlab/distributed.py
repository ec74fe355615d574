"""Data-parallel victim training and generation under torchrun (DDP: gloo on CPU, nccl on CUDA), sharded
by sample index.

    torchrun --nproc-per-node 4 -m poisonlab train --data DATA --test-data TEST --epochs 30 --checkpoint ck.pt
    torchrun --nproc-per-node 4 -m poisonlab protect --method minmaxmin --data DATA --out OUT

Generation (REM, min-max-min: poisonlab.protect.interleaved) works the same way with SharedDraws below.

Every rank holds the whole uint8 data set (as train_victim always does) and draws the same random stream:
the epoch's permutation and the augmentation draws of each global batch are those of one process with the
same seed. Each rank then loads, augments (poisonlab.augment.Augment.apply: a mixed row's partner comes from
the global batch) and trains on its contiguous share of the global batch alone; the gradients are averaged by
DDP with the loss scaled so that the average is the global batch's mean loss, and BatchNorm statistics
are synchronised over the global batch (SyncBatchNorm). Standard training therefore follows the
one-process run up to floating-point summation order. Rank 0 writes checkpoints; a checkpoint holds
nothing of the world size, so a run resumes with any number of processes (or one).

Randomness drawn on a rank's share (e.g. the random start of PGD adversarial training) differs from one
process; the generator is re-synchronised from rank 0 before every batch, so all ranks keep one stream.
"""

import copy
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .runtime import pick_device
from .train import evaluate


class _GlobalBatchNormFn(torch.autograd.Function):
    """Batch normalisation over the ranks' shares together (CPU/gloo: torch's SyncBatchNorm is GPU-only).
    Two-pass statistics (mean, then centred squares) as one process computes them; the backward sums the
    ranks' gradient terms, so each rank gets its part of the gradient of the sum of all ranks' losses."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn, group):
        dims = [0, *range(2, x.ndim)]
        count = torch.tensor([float(x.numel() // x.shape[1])])
        total = torch.cat([x.sum(dims).double(), count.double()])
        dist.all_reduce(total, group=group)
        n = total[-1].item()
        mean = (total[:-1] / n).to(x.dtype)
        shape = (1, -1, *([1] * (x.ndim - 2)))
        xc = x - mean.view(shape)
        sq = (xc * xc).sum(dims).double()
        dist.all_reduce(sq, group=group)
        var = (sq / n).to(x.dtype)
        invstd = torch.rsqrt(var + bn.eps)
        if bn.track_running_stats:
            with torch.no_grad():
                m = bn.momentum
                bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
                bn.running_var.mul_(1 - m).add_(var * n / max(n - 1, 1), alpha=m)
                bn.num_batches_tracked.add_(1)
        xhat = xc * invstd.view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n, ctx.shape, ctx.dims, ctx.group = n, shape, dims, group
        return xhat * weight.view(shape) + bias.view(shape)

    @staticmethod
    def backward(ctx, g):
        xhat, invstd, weight = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        gb, gw = g.sum(dims), (g * xhat).sum(dims)
        both = torch.cat([gb, gw]).double()
        dist.all_reduce(both, group=ctx.group)
        sb, sw = (both / ctx.n).to(g.dtype).chunk(2)
        dx = (weight * invstd).view(shape) * (g - sb.view(shape) - xhat * sw.view(shape))
        return dx, gw, gb, None, None


class _GlobalBatchNorm:
    """Mixed into a BatchNorm layer's class (same module, parameters, buffers and state_dict keys as one
    process): in training, statistics over all ranks; in evaluation the running ones (equal on all ranks)."""

    bn_group = None

    def forward(self, x):
        if not self.training or self.momentum is None or not self.affine or not self.track_running_stats:
            return super().forward(x)
        return _GlobalBatchNormFn.apply(x, self.weight, self.bias, self, self.bn_group)


def _global_batchnorm(model, group):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _GlobalBatchNorm):
            m.__class__ = type(f"Global{type(m).__name__}", (_GlobalBatchNorm, type(m)), {})
            m.bn_group = group
    return model


class DataParallel:
    """What train_victim(parallel=...) asks of a process group (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(device)
        self.is_main = self.rank == 0
        # BatchNorm's collectives on their own group: never interleaved with DDP's gradient buckets.
        self._bn_group = dist.new_group(backend="gloo") if self.device.type != "cuda" else None

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """DDP over the model with BatchNorm over the global batch; `.module` is the plain model (saved,
        evaluated). On CUDA torch's SyncBatchNorm; elsewhere GlobalBatchNorm, which wraps the layers in
        place, so the model's own state_dict keys stay those of one process."""
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[self.device.index or 0])
        return DistributedDataParallel(_global_batchnorm(model, self._bn_group))

    def sync_generator(self, gen: torch.Generator, src: int = 0):
        state = gen.get_state().to(self._comm_device)
        dist.broadcast(state, src)
        gen.set_state(state.cpu())

    def barrier(self):
        dist.barrier()

    def share(self, n: int, rank: int | None = None):
        """(slice of this rank's (or `rank`'s) share of a global batch of n, loss scale): the scale makes DDP's
        average of the ranks' mean losses the global mean even when n does not divide evenly."""
        rank = self.rank if rank is None else rank
        lo, hi = rank * n // self.world, (rank + 1) * n // self.world
        return slice(lo, hi), self.world * (hi - lo) / max(n, 1)

    def sum(self, *values):
        """Sums over ranks of tensors or numbers (one all-reduce), returned as tensors."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64).cpu() for v in values]).to(self._comm_device)
        dist.all_reduce(t)
        return t.cpu().unbind()

    def evaluate(self, model, data, device, amp=True) -> float:
        """Clean test accuracy with the test set sharded by index (every rank's share, summed)."""
        mine = torch.arange(self.rank, len(data), self.world)
        part = data.subset(mine)
        correct = round(evaluate(model, part, device, amp=amp) * len(part) / 100) if len(part) else 0
        total, = self.sum(correct)
        return 100.0 * total.item() / max(len(data), 1)

    @property
    def _comm_device(self):
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


class SharedDraws:
    """Data-parallel generation (REM, min-max-min) on one process's random stream.

    Each rank computes the noise and adversary of its contiguous share of a global batch; every random
    draw (PGD random starts, augmentation of the eot copies) is made for the whole global batch, as one
    process makes it, and this rank keeps its rows. So all ranks stay on one stream without broadcasts,
    and the share of each image gets the randomness it gets in one process. The augmentation draws its
    parameters for the global batch and applies them to this rank's rows only (poisonlab.augment's
    draw/apply); a random start is drawn whole (its draw is all its work) and this rank keeps its rows.

        draws = SharedDraws(parallel, gen)
        part = draws.set(len(idx))                     # this rank's slice of the global batch
        pgd = draws.pgd(LinfPGD(...)); aug = draws.augment(aug)
        noise[idx] = draws.gather(new_of_my_share)     # every rank holds the global batch's noise

    PGD's mean loss becomes sum / (global count): the same gradient per sample as one process's mean,
    not merely the same direction. A rank whose share is empty (a last batch smaller than the world)
    skips the work; call resync() after such a batch to copy the stream from the last rank."""

    def __init__(self, parallel: DataParallel, gen: torch.Generator):
        self.parallel, self.gen = parallel, gen
        self.lo = self.hi = self.n = 0

    def set(self, n: int) -> slice:
        part, self.scale = self.parallel.share(n)
        self.lo, self.hi, self.n = part.start, part.stop, n
        return part

    def _copies(self, x):
        return x.shape[0] // (self.hi - self.lo)  # e.g. the eot copies PGD stacks: copy c of row i is row c * k + i

    def _rows(self, x):
        copies = self._copies(x)
        rows = torch.arange(copies, device=x.device)[:, None] * self.n + torch.arange(self.lo, self.hi, device=x.device)
        return copies, rows.flatten()

    def apply(self, fn, x, *args):
        """fn (a per-sample draw from a generator that reads only its input's shape and device, e.g. PGD's
        random start) made for the global batch; this rank's rows of its output."""
        copies, rows = self._rows(x)
        # the global batch's shape on a one-element tensor (expand allocates nothing): the draw reads no value
        return fn(x.new_empty(()).expand(copies * self.n, *x.shape[1:]), *args)[rows]

    def augment(self, aug):
        """aug (draw/apply, e.g. Augment().geometric) drawn for the global batch, applied to this rank's rows."""
        if aug is None:
            return None
        if not (hasattr(aug, "draw") and hasattr(aug, "apply")):
            raise ValueError("SharedDraws.augment needs an augmentation that draws apart (poisonlab.augment.Geometric)")

        def mine(x, gen):
            copies, rows = self._rows(x)
            draws = aug.draw(copies * self.n, x.device, gen)
            return aug.apply(x, {k: v[rows] for k, v in draws.items()})
        return mine

    def pgd(self, pgd):
        """A copy of a PGD whose random start and augmentation draw for the global batch."""
        if pgd.loss_fn is not F.cross_entropy:
            raise ValueError("SharedDraws.pgd needs PGD's default cross-entropy loss")
        p = copy.copy(pgd)
        p.init_delta = lambda x, gen: self.apply(pgd.init_delta, x, gen)
        p.augment = self.augment(pgd.augment)
        p.loss_fn = lambda logits, y: F.cross_entropy(logits, y, reduction="sum") / (self._copies(y) * self.n)
        return p

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """The global batch from every rank's share (an all_gather: the bits are kept, -0.0 included)."""
        par, world = self.parallel, self.parallel.world
        m = -(-self.n // world)  # the largest share
        buf = part.new_zeros((m, *part.shape[1:]))
        buf[:len(part)] = part
        buf = buf.to(par._comm_device)
        outs = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(outs, buf)
        shares = [par.share(self.n, r)[0] for r in range(world)]
        return torch.cat([o[:s.stop - s.start] for o, s in zip(outs, shares)]).to(part.device)

    def resync(self):
        if self.n < self.parallel.world:  # some rank drew nothing: the last rank always has a share
            self.parallel.sync_generator(self.gen, src=self.parallel.world - 1)


def from_env(device: str = "auto") -> DataParallel | None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); None
    when not launched by torchrun with more than one process. Returns the DataParallel to pass to
    train_victim, with this rank's device (cuda:LOCAL_RANK on a GPU host)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return join(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device,
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def join(rank: int, world: int, device: str = "auto", init_method: str = "env://", local_rank: int = 0):
    """init_process_group with gloo on CPU, nccl on CUDA; returns this rank's DataParallel."""
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=init_method,
                                rank=rank, world_size=world)
    return DataParallel(dev)


def leave():
    if dist.is_initialized():
        dist.destroy_process_group()
