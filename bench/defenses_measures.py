"""What the defenses bench measures beside accuracy: an attack's success probe, masks of sample indices, the
loss-reading training hooks (LossTrace, LossRecord), the augmented loss and the loss separation of the poisons."""

import torch

from poisonlab.augment import random_crop
from poisonlab.data import ImageSet
from poisonlab.defenses.itlm import lowest_loss
from poisonlab.defenses.probe import accuracy, per_sample_loss, precision_recall


def success_probe(attack, result, test: ImageSet) -> ImageSet | None:
    """The images an attack wants misclassified, labelled with the class it wants: a backdoor's triggered test
    images of the other classes (its target class), a targeted attack's targets (their adversarial classes);
    None for attacks judged by the accuracy drop alone. Attack success = the share predicted as labelled."""
    if hasattr(attack, "triggered_test"):
        x, _ = attack.triggered_test(test.images, test.labels)
        return ImageSet(x, torch.full((len(x),), attack.target_class, dtype=torch.long), list(test.classes))
    if result.meta.get("targets"):
        ids = [int(t["id"]) for t in result.meta["targets"]]
        adv = torch.tensor([int(t["adversarial_class"]) for t in result.meta["targets"]])
        return ImageSet(test.images[ids], adv, list(test.classes))
    return None


def mask_of(index, n) -> torch.Tensor:
    """(n,) bool, True at index (the poisons, a kept set, ...)."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.as_tensor(index, dtype=torch.long)] = True
    return mask


def trimmed_of(kept, n) -> torch.Tensor:
    return torch.nonzero(~mask_of(kept, n)).flatten()


class LossTrace:
    """train_victim hook: after every epoch, the precision of the highest-loss fraction against the poisons
    (global and per label class). Only reads the model; the training run is the undefended one."""

    def __init__(self, data: ImageSet, poisons):
        self.data, self.poisons, self.rows = data, poisons, []

    def spec(self):
        return "loss-trace"

    def after_epoch(self, epoch, record, state):
        loss = per_sample_loss(state.model, self.data)
        frac = 1 - len(self.poisons) / len(self.data)
        row = {"epoch": epoch + 1}
        for key, groups in (("global", None), ("per_class", self.data.labels)):
            row[key] = round(precision_recall(trimmed_of(lowest_loss(loss, frac, groups), len(loss)),
                                              self.poisons)["precision"], 1)
        self.rows.append(row)

    def state_dict(self):
        return {"rows": torch.tensor([[r["epoch"], r["global"], r["per_class"]] for r in self.rows]).reshape(-1, 3)}

    def load_state_dict(self, d):
        self.rows = [{"epoch": int(e), "global": round(float(g), 1), "per_class": round(float(c), 1)}
                     for e, g, c in d["rows"].tolist()]


class LossRecord:
    """train_victim hook that only reads: every training sample's loss after every epoch (eval mode, no
    augmentation) and its training loss during that epoch (augmented, train mode, as the step computed it)."""

    def __init__(self, data: ImageSet, epochs: int):
        self.data = data
        self.eval, self.train = (torch.full((epochs, len(data)), float("nan")) for _ in range(2))

    def spec(self):
        return "loss-record"

    def after_step(self, state):
        self.train[state.epoch, state.index.cpu()] = state.losses.float().cpu()

    def after_epoch(self, epoch, record, state):
        self.eval[epoch] = per_sample_loss(state.model, self.data)

    def state_dict(self):
        return {"eval": self.eval, "train": self.train}

    def load_state_dict(self, d):
        self.eval, self.train = d["eval"], d["train"]


class EpochLoss:
    """train_victim hook that only reads: after every epoch, every sample of `data`'s loss (eval mode, no
    augmentation) and the accuracy on each of `checks` (validation sets)."""

    def __init__(self, data: ImageSet, epochs: int, checks: list[ImageSet]):
        self.data, self.checks = data, checks
        self.losses = torch.full((epochs, len(data)), float("nan"))
        self.val = torch.full((epochs, len(checks)), float("nan"))

    def spec(self):
        return "s10-trace"  # the name its first checkpoints (session 10) were cached under

    def after_epoch(self, epoch, record, state):
        self.losses[epoch] = per_sample_loss(state.model, self.data)
        self.val[epoch] = torch.tensor([accuracy(state.model, c) for c in self.checks])

    def state_dict(self):
        return {"loss": self.losses, "val": self.val}

    def load_state_dict(self, d):
        self.losses, self.val = d["loss"], d["val"]


def tta_loss(model, data: ImageSet, crops=4, seed=0) -> torch.Tensor:
    """Every sample's loss averaged over the image, its mirror and `crops` random crops (4-pixel padding, every
    other one mirrored): the victim's own crop+flip augmentation, at scoring time."""
    g, views = torch.Generator().manual_seed(seed), [data.images, data.images.flip(3)]
    for v in range(crops):
        x = random_crop(data.images.float(), 4, g).to(torch.uint8)
        views.append(x.flip(3) if v % 2 else x)
    return torch.stack([per_sample_loss(model, ImageSet(x, data.labels, list(data.classes))) for x in views]).mean(0)


def separation_stats(loss: torch.Tensor, positive: torch.Tensor) -> dict:
    """ROC AUC of the loss for telling positives (poisons) from the rest (0.5 = chance, 1 = every poison has a
    higher loss than every clean sample), precision of the top-|positives| losses, and both groups' mean loss."""
    rank = torch.empty(len(loss))
    rank[torch.argsort(loss, stable=True)] = torch.arange(1, len(loss) + 1, dtype=torch.float)
    p, n = int(positive.sum()), int((~positive).sum())
    top = torch.topk(loss, p).indices
    return {"n": len(loss), "poisons": p, "auc": round((rank[positive].sum().item() - p * (p + 1) / 2) / (p * n), 3),
            "precision": round(100.0 * positive[top].float().mean().item(), 1),
            "loss_clean": round(loss[~positive].mean().item(), 2), "loss_poison": round(loss[positive].mean().item(), 2)}
