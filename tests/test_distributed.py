"""Data-parallel victim training (poisonlab.distributed): 2 processes with gloo on CPU against one process
under the same seed, and a checkpoint written by 2 processes resumed by one (generation: test_distributed_generation.py)."""

import json
import math

import pytest
import torch
import torch.multiprocessing as mp

from poisonlab.augment import Geometric
from poisonlab.distributed import join, leave
from poisonlab.train import TrainConfig, train_victim

from test_bench import synthetic_npz
from poisonlab.data import load_dataset

# Batch 21: every share is uneven (21 = 10 + 11; over 70 images the last batch 7 = 3 + 4), so the loss
# scaling that makes DDP's average the global mean is exercised.
CFG = dict(model="smallcnn", width=0.25, batch_size=21, lr=0.05, seed=3, device="cpu")
STEP_TOL = 1e-5  # one SGD step: weights, absolute
RUN_TOL = 5e-3  # 8 steps: weights absolute, epoch losses relative
# Label-mixing augmentation on batches of 7 over 21 images (shares 3 + 4), 2 epochs: 6 steps.
MIXED = dict(CFG, batch_size=7, epochs=2, augment="crop=4,flip,cutout=8,mixup=1,cutmix=1")


def data(tmp, make=0):
    src = tmp / "d.npz"
    if make:  # by the parent only (make = the number of training images): the ranks read it
        synthetic_npz(src, n_train=make, n_test=30)
    return load_dataset(str(src), "train"), load_dataset(str(src), "test")


class Seen:
    """A hook that keeps what transform_batch is given (x, y, y_soft) at every step."""

    def __init__(self):
        self.batches = []

    def transform_batch(self, x, y, y_soft, state):
        self.batches.append((x.clone(), y.clone(), y_soft.clone()))
        return x, y_soft


def _rank(rank, world, tmp, epochs, schedule, ckpt, out, seen=False):
    torch.set_num_threads(1)
    par = join(rank, world, "cpu", init_method=f"file://{tmp}/rendezvous")
    try:
        train, test = data(tmp)
        res = train_victim(train, test, TrainConfig(epochs=epochs, schedule=schedule, **CFG), progress=False,
                           checkpoint=ckpt, return_model=True, parallel=par)
        if par.is_main:
            state = {k: v.tolist() for k, v in res["model"].state_dict().items()}
            (tmp / out).write_text(json.dumps({"history": res["history"], "state": state}))
        if seen:  # a second run on the same group: what each rank augments and its hooks see under label mixing
            hook, sizes, apply = Seen(), [], Geometric.apply
            Geometric.apply = lambda self, x, draws: sizes.append(len(x)) or apply(self, x, draws)  # this process only
            train_victim(train, None, TrainConfig(**MIXED), progress=False, parallel=par, hooks=[hook])
            torch.save({"batches": hook.batches, "augmented": sizes}, tmp / f"seen-{rank}.pt")
    finally:
        leave()


def run_two(tmp, epochs=1, schedule="cosine", ckpt=None, out="ddp.json", seen=False):
    mp.start_processes(_rank, args=(2, tmp, epochs, schedule, ckpt, out, seen), nprocs=2, join=True,
                       start_method="spawn")
    return json.loads((tmp / out).read_text())


def max_weight_gap(model, state):
    ref = model.state_dict()
    return max((ref[k].double() - torch.tensor(v, dtype=torch.float64).reshape(ref[k].shape)).abs().max().item()
               for k, v in state.items())


def test_two_processes_match_one(tmp_path):
    """One SGD step on a global batch of 21 (shares 10 + 11) by 2 ranks (gloo, CPU) equals one process's
    step up to floating-point summation order; and under label-mixing augmentation each rank's hooks see its
    rows of one process's augmented batch, bit for bit (a second run in the same processes, see below).

    Why that holds: both ranks draw the one-process permutation and the augmentation of the one-process
    global batch, and each applies it to its contiguous share; BatchNorm statistics and their gradients are
    taken over the global batch (GlobalBatchNorm); the loss is scaled so that DDP's gradient average is the
    global mean. The tolerance, measured: the step's weights differ from one process's by at most 9e-7; one process with
    2 threads instead of 1 (same math, another summation order) differs from it by 7e-7. STEP_TOL = 1e-5
    leaves 10x room for other CPUs; a per-rank BatchNorm or an unscaled loss moves weights by ~1e-3 and more.
    Accuracy (argmax counts) within one image: a logit tie that noise can flip.
    """
    train, test = data(tmp_path, make=21)
    one = train_victim(train, test, TrainConfig(epochs=1, **CFG), progress=False, return_model=True)
    two = run_two(tmp_path, seen=True)
    assert len(two["history"]) == 1
    h1, h2 = one["history"][0], two["history"][0]
    assert math.isclose(h1["train_loss"], h2["train_loss"], rel_tol=STEP_TOL)
    assert abs(h1["test_acc"] - h2["test_acc"]) <= 100 / 30 + 1e-9
    assert max_weight_gap(one["model"], two["state"]) <= STEP_TOL
    _check_ranks_see_their_rows(tmp_path, train)


def _check_ranks_see_their_rows(tmp, train):
    """Each rank augments its share alone (crop, flip, cutout: its rows and, for mixup/cutmix, their partners
    from the global batch: twice the share, never the global batch), and its hooks get exactly its rows of one
    process's augmented global batch (images, labels, soft labels) at every step: the augmentation does not
    depend on the model, and the ranks keep one process's stream."""
    hook = Seen()
    train_victim(train, None, TrainConfig(**MIXED), progress=False, hooks=[hook])
    ranks = [torch.load(tmp / f"seen-{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(len(hook.batches) == len(seen["batches"]) == len(seen["augmented"]) == 6 for seen in ranks)
    for step, whole in enumerate(hook.batches):
        n = len(whole[0])
        for r, seen in enumerate(ranks):
            share = slice(r * n // 2, (r + 1) * n // 2)
            assert all(torch.equal(a, b[share]) for a, b in zip(seen["batches"][step], whole)), (step, r)
            assert seen["augmented"][step] == 2 * (share.stop - share.start), (step, r)


def test_checkpoint_of_two_processes_resumes_in_one(tmp_path):
    """Rank 0 writes the checkpoint; it holds nothing of the world size, so one process extends a 2-process
    epoch of 70 images (4 steps; constant schedule, 1 epoch then to 2) and lands where one uninterrupted
    process does. Tolerance RUN_TOL = 5e-3: the summation-order noise of one step (above) grows with the
    steps while the loss falls from 1.2 to 0.2 on this data: after 8 steps, 1 against 2 threads in one
    process already differ by 2e-4 in a weight, 2 ranks against one by up to 1.2e-3 (weights are 0.07-0.5).
    """
    ckpt = tmp_path / "ck.pt"
    train, test = data(tmp_path, make=70)
    two = run_two(tmp_path, schedule="constant", ckpt=str(ckpt))
    assert ckpt.exists() and len(two["history"]) == 1
    cfg = TrainConfig(epochs=2, schedule="constant", **CFG)
    resumed = train_victim(train, test, cfg, progress=False, checkpoint=ckpt, return_model=True)
    straight = train_victim(train, test, cfg, progress=False, return_model=True)
    assert len(resumed["history"]) == 2
    for h1, h2 in zip(straight["history"], resumed["history"]):
        assert math.isclose(h1["train_loss"], h2["train_loss"], rel_tol=RUN_TOL)
        assert abs(h1["test_acc"] - h2["test_acc"]) <= 100 / 30 + 1e-9
    gap = max_weight_gap(straight["model"], {k: v.tolist() for k, v in resumed["model"].state_dict().items()})
    assert gap <= RUN_TOL


def _rank_at(rank, world, tmp):
    torch.set_num_threads(1)
    par = join(rank, world, "cpu", init_method=f"file://{tmp}/rendezvous-at")
    try:
        train, test = data(tmp)
        cfg = TrainConfig(epochs=1, adv_eps=4 / 255, adv_steps=1, **CFG)
        res = train_victim(train, test, cfg, progress=False, return_model=True, parallel=par)
        state = {k: v.tolist() for k, v in res["model"].state_dict().items()}
        (tmp / f"at-{rank}.json").write_text(json.dumps({"history": res["history"], "state": state}))
    finally:
        leave()


def test_adversarial_training_keeps_ranks_in_step(tmp_path):
    """PGD-AT under 2 ranks with uneven shares (its random start draws 10 vs 11 images' worth): the ranks
    stay on one random stream and one model (equal weights and epoch records on both), and the run agrees
    with one process within RUN_TOL (the random starts differ by design)."""
    train, test = data(tmp_path, make=21)
    mp.start_processes(_rank_at, args=(2, tmp_path), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"at-{r}.json").read_text()) for r in (0, 1))
    assert r0["history"][0]["train_loss"] == r1["history"][0]["train_loss"]
    assert r0["state"] == r1["state"]
    one = train_victim(train, test, TrainConfig(epochs=1, adv_eps=4 / 255, adv_steps=1, **CFG), progress=False,
                       return_model=True)
    assert max_weight_gap(one["model"], r0["state"]) <= RUN_TOL
