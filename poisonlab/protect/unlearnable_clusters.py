"""Unlearnable Clusters (UC): label-agnostic unlearnable examples from cluster-wise noise.

Zhang, Ma, Yi, Sang, Jiang, Wang, Xu. "Unlearnable Clusters: Towards Label-agnostic Unlearnable Examples",
CVPR 2023 (seed 002). Needs no labels at all:

1. embed every image with a surrogate feature extractor (the paper: an ImageNet or CLIP image encoder);
2. k-means in that feature space splits the data into p clusters C_1..C_p with centers mu_1..mu_p;
3. for each cluster a generator G_i maps a fixed random input sigma_i to one perturbation
   delta_i = G_i(sigma_i), trained so that the surrogate's features of x + delta_i (x in C_i) match the
   center of ANOTHER cluster:  min KL( softmax(mu_{(i+offset) mod p}) || softmax(f(x + delta_i)) ).
   Every image of a cluster gets the same noise, so whatever labels an exploiter attaches, the noise is
   a shortcut that is consistent within clusters and tied to no class.

T2UE (text-to-unlearnable, seed 002) and the paper's CLIP surrogate need a pretrained CLIP, which cannot be
loaded on the machines this was built on; the surrogate argument takes any module, so a user who has one
passes it in (see docs/labelfree.md).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import PoisonlabError
from ..augment import Augment
from ..checks import check_model_input
from ..kmeans import kmeans
from ..models import create_model
from ..runtime import autocast, pick_device, prepare_model, seed_everything, to_float_batch
from ..data import ImageSet
from ..data.unlabelled import UNLABELLED
from ..registry import METHODS
from ..progress import progress as progress_bar
from .base import Protection
from .surrogate import Batches

EMBEDDINGS = ("auto", "penultimate", "output")
PRETRAIN = ("rotation", "none")
SPACES = ("embedding", "softmax")


# ----------------------------------------------------------------------------------- the generator
class _GroupedResBlock(nn.Module):
    def __init__(self, groups, dim):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(groups * dim, groups * dim, 3, groups=groups, bias=False),
            nn.BatchNorm2d(groups * dim), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(groups * dim, groups * dim, 3, groups=groups, bias=False),
            nn.BatchNorm2d(groups * dim))

    def forward(self, x):
        return x + self.body(x)


class ClusterGenerators(nn.Module):
    """p independent ResNet generators (the design of Naseer et al., NeurIPS 2019, that UC trains: 7x7 stem,
    two stride-2 downsamplings, `blocks` residual blocks, two transposed-conv upsamplings, 7x7 head, tanh),
    run side by side as ONE network with grouped convolutions: group i holds generator i's weights, and
    batch norm is per channel, so the generators never share a parameter or a statistic.

    forward(z) with z (1, p*C, H, W) returns p perturbations (p, C, H, W): tanh clamped to [-eps, eps], as
    the official code bounds them (the clamp saturates most pixels at +-eps from the start).
    """

    def __init__(self, clusters, channels=3, ngf=64, blocks=6, eps=8 / 255):
        super().__init__()
        g, self.p, self.c, self.eps = clusters, clusters, channels, eps

        def conv_bn(cin, cout, **kw):
            return [nn.Conv2d(g * cin, g * cout, groups=g, bias=False, **kw), nn.BatchNorm2d(g * cout), nn.ReLU(inplace=True)]

        def up_bn(cin, cout):
            return [nn.ConvTranspose2d(g * cin, g * cout, 3, stride=2, padding=1, output_padding=1, groups=g, bias=False),
                    nn.BatchNorm2d(g * cout), nn.ReLU(inplace=True)]

        self.net = nn.Sequential(
            nn.ReflectionPad2d(3), *conv_bn(channels, ngf, kernel_size=7),
            *conv_bn(ngf, 2 * ngf, kernel_size=3, stride=2, padding=1),
            *conv_bn(2 * ngf, 4 * ngf, kernel_size=3, stride=2, padding=1),
            *[_GroupedResBlock(g, 4 * ngf) for _ in range(blocks)],
            *up_bn(4 * ngf, 2 * ngf), *up_bn(2 * ngf, ngf),
            nn.ReflectionPad2d(3), nn.Conv2d(g * ngf, g * channels, 7, groups=g), nn.Tanh())

    def forward(self, z):
        h, w = z.shape[-2:]
        # the two stride-2 stages need sides divisible by 4: pad (reflect) and crop back
        ph, pw = -h % 4, -w % 4
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph), mode="reflect")
        out = self.net(z)[..., :h, :w]
        return out.reshape(self.p, self.c, h, w).clamp(-self.eps, self.eps)


# ----------------------------------------------------------------------------------- feature extraction
class Embedder:
    """Turns a surrogate module into a feature map: images in [0, 1] -> (N, D) embeddings.

    embedding="auto": the module's `encode_image` when it has one (CLIP-like encoders), else the input of its
    last nn.Linear (the penultimate features of a classifier, as the paper hooks the ResNet's fc), else its
    output. "penultimate"/"output" force one of the two.
    """

    def __init__(self, module: nn.Module, embedding="auto"):
        if embedding not in EMBEDDINGS:
            raise PoisonlabError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        self.module, self._store = module, {}
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        self.encode = getattr(module, "encode_image", None) if embedding == "auto" else None
        self.hook = None
        if self.encode is None and embedding != "output" and linears:
            self.hook = linears[-1].register_forward_pre_hook(lambda _m, inp: self._store.__setitem__("f", inp[0]))
        elif embedding == "penultimate":
            raise PoisonlabError("embedding=penultimate needs a surrogate with an nn.Linear layer")

    def __call__(self, x):
        if self.encode is not None:
            return self.encode(x).flatten(1).float()
        out = self.module(x)
        if self.hook is not None:
            out = self._store.pop("f")
        return out.flatten(1).float()

    def close(self):
        if self.hook is not None:
            self.hook.remove()


def rotate_batch(x, quarter_turns):
    """Rotate each image by its own multiple of 90 degrees (label-free pretext task)."""
    out = x.clone()
    for q in range(1, 4):
        sel = quarter_turns == q
        if bool(sel.any()):
            out[sel] = torch.rot90(x[sel], q, dims=(2, 3))
    return out


# ----------------------------------------------------------------------------------- the method
@METHODS.register(label="Unlearnable Clusters")
class UnlearnableClusters(Protection):
    """Unlearnable Clusters (Zhang et al., CVPR 2023): cluster-wise noise from k-means in a surrogate's
    feature space; uses no labels (needs_labels = False).

    Paper/official-code defaults: p = 10 clusters, one ResNet generator per cluster (ngf 64, 6 blocks) fed a
    fixed uniform noise input, Adam lr 1e-4 (weight decay 5e-4, cosine to 1e-6), 50 epochs, batch 256,
    target = center of cluster (i + 1) mod p, KL loss on softmax-ed features, random crop+flip of the clean
    images. The paper's budget is 16/255 at 224 px; poisonlab's default is 8/255.

    surrogate: a registered model name, or any nn.Module mapping [0,1] images to logits or embeddings (a
      classifier trained on other data, a self-supervised encoder, a CLIP image encoder with its own
      resizing/normalisation wrapped in). Only its features are used; it is never trained on labels here.
    surrogate_weights: a state-dict file (read with weights_only=True) for a registered surrogate.
    surrogate_pretrain: for a registered surrogate without weights, "rotation" trains it label-free on the
      images themselves by predicting rotations (Gidaris et al., ICLR 2018) for surrogate_epochs epochs;
      "none" uses it as it is (random features).
    embedding: auto | penultimate | output (see Embedder). clusters/target_offset: p and the cluster shift.
    cluster_space: "embedding" (the paper) runs k-means on the embeddings and targets softmax(center);
      "softmax" runs it on softmax(embedding) and targets the center itself (a mean probability vector).
      With embedding="output" and a classifier trained on other data, "softmax" clusters by the surrogate's
      class posterior, which follows classes more closely than its penultimate features do (docs/labelfree.md).
    ngf/blocks: generator width/depth; gen_epochs/gen_lr/gen_batch_size: its training.
    Each generator is fit on its own cluster's images (the paper's objective; the official code draws its
    batches from the whole set), all p at once: one grouped network, one pass per minibatch.
    """

    name = "unlearnable_clusters"
    model_based = True
    needs_labels = False
    min_side = 3  # the generator reflect-pads each side to a multiple of 4

    def __init__(self, eps=None, seed=0, device="auto", surrogate="resnet18", width=1.0, surrogate_weights=None,
                 surrogate_pretrain="rotation", surrogate_epochs=20, surrogate_lr=0.1, embedding="auto",
                 cluster_space="embedding", clusters=10, target_offset=1, kmeans_restarts=3, ngf=64, blocks=6,
                 gen_epochs=50, gen_lr=1e-4, gen_batch_size=256, augment=True):
        super().__init__(eps, seed, device)
        if not isinstance(surrogate, (str, nn.Module)):
            raise PoisonlabError("surrogate must be a model name or an nn.Module")
        if surrogate_pretrain not in PRETRAIN:
            raise PoisonlabError(f"surrogate_pretrain must be one of {PRETRAIN}, got {surrogate_pretrain!r}")
        if embedding not in EMBEDDINGS:
            raise PoisonlabError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        if cluster_space not in SPACES:
            raise PoisonlabError(f"cluster_space must be one of {SPACES}, got {cluster_space!r}")
        self.cluster_space = cluster_space
        self.surrogate, self.width, self.surrogate_weights = surrogate, float(width), surrogate_weights
        self.surrogate_pretrain, self.surrogate_epochs = surrogate_pretrain, int(surrogate_epochs)
        self.surrogate_lr, self.embedding = float(surrogate_lr), embedding
        self.clusters, self.target_offset, self.kmeans_restarts = int(clusters), int(target_offset), int(kmeans_restarts)
        self.ngf, self.blocks, self.gen_epochs = int(ngf), int(blocks), int(gen_epochs)
        self.gen_lr, self.gen_batch_size, self.augment = float(gen_lr), int(gen_batch_size), bool(augment)
        if self.clusters < 2:
            raise PoisonlabError("clusters must be >= 2 (the noise of a cluster targets another cluster's center)")
        if self.target_offset % self.clusters == 0:
            raise PoisonlabError("target_offset must not be a multiple of clusters (it would target a cluster's own center)")
        if min(self.ngf, self.gen_epochs, self.gen_batch_size) < 1 or self.blocks < 0 or self.surrogate_epochs < 0:
            raise PoisonlabError("ngf, gen_epochs and gen_batch_size must be >= 1; blocks and surrogate_epochs >= 0")
        self.progress = False

    @property
    def surrogate_info(self):
        if isinstance(self.surrogate, nn.Module):
            model, how = f"custom:{type(self.surrogate).__name__}", "given module"
        else:
            model, how = self.surrogate, "weights file" if self.surrogate_weights else self.surrogate_pretrain
        return {"model": model, "width": self.width, "pretrain": how, "embedding": self.embedding,
                "cluster_space": self.cluster_space}

    # ----- labels are optional: images alone are a complete input
    def __call__(self, images, labels=None, *, classes=None, names=None, checkpoint=None):
        if labels is None and not isinstance(images, ImageSet):
            labels, classes = torch.zeros(len(images), dtype=torch.int64), [UNLABELLED]
        return super().__call__(images, labels, classes=classes, names=names, checkpoint=checkpoint)

    def poison(self, x, y=None):
        if y is None and not isinstance(x, ImageSet):
            y = torch.zeros(len(x), dtype=torch.int64, device=x.device)
        return super().poison(x, y)

    def bar(self, total, initial, desc):
        return progress_bar(total, desc, initial=initial, enabled=self.progress)

    # ----- stage 1: the surrogate
    def build_surrogate(self, data):
        """The frozen feature extractor; returns (module, needs_rotation_pretraining)."""
        if isinstance(self.surrogate, nn.Module):
            return self.surrogate.to(self.device_), False
        c = data.shape[0]
        if self.surrogate_weights:
            try:
                state = torch.load(self.surrogate_weights, map_location="cpu", weights_only=True)
            except Exception as e:  # a missing, truncated or foreign file is the user's to fix
                raise PoisonlabError(f"cannot read surrogate weights {self.surrogate_weights}: {e}") from None
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            if not isinstance(state, dict):
                raise PoisonlabError(f"{self.surrogate_weights} holds no state dict")
            heads = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
            model = create_model(self.surrogate, heads[-1].shape[0] if heads else 10, c, self.width)
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise PoisonlabError(f"{self.surrogate_weights} does not fit {self.surrogate} (width {self.width}): "
                                     f"{str(e).splitlines()[0]}") from None
            return prepare_model(model, self.device_), False
        model = prepare_model(create_model(self.surrogate, 4, c, self.width), self.device_)
        return model, self.surrogate_pretrain == "rotation" and self.surrogate_epochs > 0

    def rotation_pretrain(self, model, images, gen, ckpt, state):
        """Label-free surrogate: learn to tell which of 4 rotations was applied (2 for non-square images)."""
        turns = 4 if images.shape[2] == images.shape[3] else 2
        opt = torch.optim.SGD(model.parameters(), lr=self.surrogate_lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        bs = min(128, len(images))
        steps_per_epoch = math.ceil(len(images) / bs)
        total = self.surrogate_epochs * steps_per_epoch
        batches, start = Batches(len(images), bs, gen), 0
        if state.get("stage") == "pretrain":
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            batches.load(state["batches"])
            start = state["step"]
        model.train()
        with self.bar(total, start, "uc surrogate (rotation)") as bar:
            for step in range(start, total):
                for g in opt.param_groups:
                    g["lr"] = 0.5 * self.surrogate_lr * (1 + math.cos(math.pi * step / total))
                idx = batches.next()
                x = self.batch(images, idx)
                x = self.aug(x, gen) if self.aug is not None else x
                q = torch.randint(0, turns, (len(idx),), device=x.device, generator=gen)
                x = rotate_batch(x, q * (4 // turns))
                with autocast(self.device_):
                    loss = F.cross_entropy(model(x).float(), q)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
                ckpt.save(lambda: {"stage": "pretrain", "model": model.state_dict(), "opt": opt.state_dict(),
                                   "gen": gen.get_state(), "batches": batches.state(), "step": step + 1})
        ckpt.save({"stage": "pretrained", "model": model.state_dict()}, force=True)

    @torch.no_grad()
    def embed_all(self, embed, images):
        out = []
        for s in range(0, len(images), 512):
            with autocast(self.device_):
                out.append(embed(self.batch(images, torch.arange(s, min(s + 512, len(images)), device=images.device))))
        return torch.cat(out)

    def batch(self, images, idx):
        return to_float_batch(images[idx], self.device_)

    # ----- the whole method
    def perturb(self, data, ckpt):
        self.device_ = pick_device(self.device)
        seed_everything(self.seed)
        if len(data) < self.clusters:
            raise PoisonlabError(f"{len(data)} images cannot form {self.clusters} clusters; lower clusters")
        gen = torch.Generator(device=self.device_).manual_seed(self.seed)
        self.aug = Augment().geometric if self.augment else None
        images = data.images.to(self.device_)
        state = ckpt.load() or {}
        model, pretrain = self.build_surrogate(data)
        check_model_input(model, data.shape, "the surrogate")  # e.g. images it pools away: one line, up front
        if pretrain:
            if state.get("stage") in (None, "pretrain"):
                self.rotation_pretrain(model, images, gen, ckpt, state)
            else:
                model.load_state_dict(state["model"])
        was_training, grads = model.training, [p.requires_grad for p in model.parameters()]
        model.eval()  # a frozen feature extractor: only the noise is optimised
        for p in model.parameters():
            p.requires_grad_(False)
        embed = Embedder(model, self.embedding)
        try:
            if "assign" in state:
                centers, assign = state["centers"].to(self.device_), state["assign"].to(self.device_)
                gen.set_state(state["gen_clustered"])
            else:
                feats = self.embed_all(embed, images)
                if self.cluster_space == "softmax":
                    feats = F.softmax(feats, dim=1)
                centers, assign, _ = kmeans(feats, self.clusters, n_init=self.kmeans_restarts, seed=self.seed)
                state = {**state, "stage": "clustered", "centers": centers.cpu(), "assign": assign.cpu(),
                         "gen_clustered": gen.get_state()}
                if pretrain:
                    state["model"] = model.state_dict()
                ckpt.save(state, force=True)
            self.diagnostics_ = {
                "embedding_dim": int(centers.shape[1]),
                "cluster_sizes": torch.bincount(assign.cpu(), minlength=self.clusters).tolist(),
                **(label_table(assign.cpu(), data.labels, self.clusters) if data.num_classes > 1 else {})}
            deltas = self.train_generators(embed, images, centers, assign, gen, ckpt, state)
            self.diagnostics_["generator_loss"] = [h["loss"] for h in self.history]
        finally:  # hand a user's module back as it came
            embed.close()
            model.train(was_training)
            for p, g in zip(model.parameters(), grads):
                p.requires_grad_(g)
        return deltas[assign].cpu()

    def train_generators(self, embed, images, centers, assign, gen, ckpt, state):
        """Fit all p generators at once: each minibatch is drawn from the whole set and every image gets its
        own cluster's noise, so generator i only ever sees (and is trained on) the images of cluster i."""
        p, c, h, w = self.clusters, *images.shape[1:]
        g_cpu = torch.Generator().manual_seed(self.seed + 1)
        z = torch.rand((1, p * c, h, w), generator=g_cpu).to(self.device_)  # the fixed inputs sigma_i
        nets = ClusterGenerators(p, c, self.ngf, self.blocks, self.eps).to(self.device_)
        opt = torch.optim.Adam(nets.parameters(), lr=self.gen_lr, weight_decay=5e-4)
        bs = min(self.gen_batch_size, len(images))
        steps_per_epoch = math.ceil(len(images) / bs)
        total = self.gen_epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total, eta_min=min(1e-6, self.gen_lr))
        target = centers[(torch.arange(p, device=centers.device) + self.target_offset) % p].float()
        target = target if self.cluster_space == "softmax" else F.softmax(target, dim=1)  # softmax centers: distributions
        batches, start, self.history = Batches(len(images), bs, gen), 0, []
        if state.get("stage") == "generators":
            nets.load_state_dict(state["nets"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            batches.load(state["batches"])
            start, self.history = state["step"], state["history"]
        nets.train()
        running = 0.0
        with self.bar(total, start, "uc generators") as bar:
            for step in range(start, total):
                idx = batches.next()
                x = self.batch(images, idx)
                x = self.aug(x, gen) if self.aug is not None else x  # augment the clean image, then add noise
                k = assign[idx]
                with autocast(self.device_):
                    delta = nets(z)
                    feats = embed((x + delta[k]).clamp(0, 1))
                loss = F.kl_div(F.log_softmax(feats.float(), dim=1), target[k], reduction="batchmean")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += loss.item()
                if (step + 1) % steps_per_epoch == 0:
                    self.history.append({"epoch": (step + 1) // steps_per_epoch, "loss": round(running / steps_per_epoch, 6)})
                    running = 0.0
                bar.set_postfix(loss=f"{loss.item():.4f}")
                bar.update(1)
                ckpt.save(lambda: {**state, "stage": "generators", "nets": nets.state_dict(), "opt": opt.state_dict(),
                                   "sched": sched.state_dict(), "gen": gen.get_state(), "batches": batches.state(),
                                   "step": step + 1, "history": list(self.history)})
        with torch.no_grad():
            return nets(z).float()  # train-mode batch norm, as during training


def label_table(assign, labels, clusters) -> dict:
    """How the clusters line up with the data's labels, when it has any: counts per (cluster, label) and the
    purity (share of images whose label is their cluster's majority label; 1.0: clusters = classes). A
    diagnostic for reports only: the noise never sees labels."""
    table = torch.zeros(clusters, int(labels.max()) + 1, dtype=torch.long)
    table.index_put_((assign, labels), torch.ones_like(labels), accumulate=True)
    return {"label_purity": round(float(table.max(1).values.sum()) / len(labels), 4), "label_table": table.tolist()}
