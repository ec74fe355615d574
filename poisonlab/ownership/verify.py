"""Verify a suspect model against a private key: a saved model, or a black-box command.

Suspects:
  * a poisonlab model file (`save_model`: architecture name, width, classes and a state dict), or a plain
    state dict / `poisonlab train --checkpoint` file together with the architecture name; all read with
    torch.load(weights_only=True), so a file cannot run code when loaded;
  * a TorchScript archive (torch.jit.save), run as the model;
  * a black-box command or an http(s) URL (BLACK-BOX PROTOCOL below), for models behind an API.

BLACK-BOX PROTOCOL. poisonlab writes the query images to a temporary .npz with one array `images`, uint8,
shape (N, C, H, W), RGB (or gray) 0..255, and runs the command (no shell) with `{}` replaced by that path
(or the path appended as the last argument). The command prints one JSON object on stdout:
    {"topk": [[label, label, ...], ...]}       N rows, labels best first (at least top_k of them), or
    {"probs": [[p_0, ..., p_{C-1}], ...]}      N rows of class probabilities (needed for the backdoor test;
                                               with topk only, the backdoor test uses 0/1 target hits).
and exits with status 0. A URL instead receives the same .npz as the body of a POST request and replies
with the same JSON. `answer_queries` implements the command side for a Python predict function.

Exit codes of `poisonlab verify`: 0 marked (p < alpha), 1 not marked, 2 error.
"""

import json
import shlex
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import PoisonlabError
from ..fileio import atomic_write
from .keys import OwnershipKey, load_key
from .stats import binomial_test, paired_t_test, rank_sum_test
from .taggants import reference_logprobs
from ..models import create_model
from ..attacks.backdoor import Trigger, apply_trigger

MODEL_FORMAT = "poisonlab-model/1"
EXIT_MARKED, EXIT_NOT_MARKED, EXIT_ERROR = 0, 1, 2
# the paper's top-k test; the rank-sum variants (poisonlab.ownership.stats): raw, and against the surrogate's answers;
# "auto" (the default): combined where the suspect's probabilities and a reference allow it, else rank
TAGGANT_TESTS = ("auto", "binomial", "rank", "reference", "combined")


# ---------------------------------------------------------------------------------------- model files
def save_model(model: torch.nn.Module, path, *, arch: str, num_classes: int, in_channels: int = 3,
               width: float = 1.0):
    """Write a model as a plain dict of tensors and metadata (loadable with weights_only=True)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path) as f:
        torch.save({"format": MODEL_FORMAT, "arch": arch, "width": float(width), "num_classes": int(num_classes),
                    "in_channels": int(in_channels), "state_dict": state}, f)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def load_model(path, *, arch=None, width=None, num_classes=None, in_channels=None, device="cpu") -> torch.nn.Module:
    """Build the suspect model from a file (see the module docstring); eval mode, on `device`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PoisonlabError(f"model file {path} not found")
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:
            raise PoisonlabError(f"cannot load TorchScript model {path}: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PoisonlabError(f"cannot read model file {path} (state dicts are read with weights_only=True): "
                             f"{str(e).splitlines()[0]}") from None
    if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT:
        arch = arch or obj["arch"]
        width = width if width is not None else obj.get("width", 1.0)
        num_classes = num_classes or obj["num_classes"]
        in_channels = in_channels or obj.get("in_channels", 3)
        state = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # a `poisonlab train --checkpoint` file
        state = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise PoisonlabError(f"{path} holds no state dict poisonlab knows")
    if not arch:
        raise PoisonlabError(f"{path} is a bare state dict: give the architecture (--arch, and --width if scaled)")
    if num_classes is None:  # the classifier is the last matrix of the state dict
        mats = [v for v in state.values() if isinstance(v, torch.Tensor) and v.ndim == 2]
        if not mats:
            raise PoisonlabError(f"{path}: cannot tell the number of classes; give it")
        num_classes = mats[-1].shape[0]
    in_channels = in_channels or 3
    model = create_model(arch, int(num_classes), int(in_channels), float(width if width is not None else 1.0))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise PoisonlabError(f"{path} does not fit {arch} (width {width}, {num_classes} classes): "
                             f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------- suspects
@dataclass
class Answers:
    topk: torch.Tensor  # int64 (N, k), best first
    probs: torch.Tensor | None = None  # float (N, C) or None (label-only black box)


class ModelSuspect:
    """A model in this process: images in [0, 1], logits out."""

    def __init__(self, model, device="cpu", batch_size=256):
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        self.device = params[0].device if params else torch.device(device)  # where the model already is
        self.model, self.batch_size = model, batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, k: int) -> Answers:
        probs = []
        for i in range(0, len(images), self.batch_size):
            x = images[i:i + self.batch_size].to(self.device).float().div_(255)
            probs.append(torch.softmax(self.model(x).float(), 1).cpu())
        p = torch.cat(probs)
        return Answers(p.topk(min(k, p.shape[1]), 1).indices, p)


class CommandSuspect:
    """A black-box model behind a command (see BLACK-BOX PROTOCOL in the module docstring)."""

    def __init__(self, command, timeout=600):
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise PoisonlabError("empty black-box command")
        self.timeout = timeout

    def __call__(self, images: torch.Tensor, k: int) -> Answers:
        with tempfile.TemporaryDirectory(prefix="poisonlab-query-") as tmp:
            q = Path(tmp) / "queries.npz"
            np.savez(q, images=images.numpy())
            argv = [a.replace("{}", str(q)) for a in self.argv]
            if not any("{}" in a for a in self.argv):
                argv.append(str(q))
            try:
                run = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
            except FileNotFoundError:
                raise PoisonlabError(f"black-box command not found: {argv[0]}") from None
            except subprocess.TimeoutExpired:
                raise PoisonlabError(f"black-box command timed out after {self.timeout}s") from None
        if run.returncode != 0:
            tail = (run.stderr or "").strip().splitlines()[-1:] or [""]
            raise PoisonlabError(f"black-box command exited with {run.returncode}: {tail[0][:200]}")
        return parse_answers(run.stdout, len(images), k)


class URLSuspect:
    """A black-box model behind an HTTP(S) endpoint: the queries .npz is POSTed as the request body
    (Content-Type application/x-npz); the reply is the same JSON as a command's."""

    def __init__(self, url: str, timeout=600):
        self.url, self.timeout = url, timeout

    def __call__(self, images: torch.Tensor, k: int) -> Answers:
        import io
        import urllib.error
        import urllib.request
        buf = io.BytesIO()
        np.savez(buf, images=images.numpy())
        req = urllib.request.Request(self.url, data=buf.getvalue(), method="POST",
                                     headers={"Content-Type": "application/x-npz"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310 (the user's own URL)
                text = r.read(64 << 20).decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise PoisonlabError(f"black-box URL {self.url} failed: {e}") from None
        return parse_answers(text, len(images), k)


def parse_answers(text: str, n: int, k: int) -> Answers:
    """Check and convert a black-box reply (JSON with `topk` and/or `probs`, n rows)."""
    try:
        obj = json.loads(text)
    except ValueError:
        raise PoisonlabError("black-box reply is not JSON") from None
    if not isinstance(obj, dict) or not ({"topk", "probs"} & set(obj)):
        raise PoisonlabError("black-box reply must be a JSON object with 'topk' or 'probs'")
    probs = None
    if obj.get("probs") is not None:
        try:
            probs = torch.tensor(obj["probs"], dtype=torch.float64)
        except (TypeError, ValueError):
            raise PoisonlabError("black-box 'probs' must be N rows of numbers") from None
        if probs.ndim != 2 or len(probs) != n or not bool(torch.isfinite(probs).all()):
            raise PoisonlabError(f"black-box 'probs' must be {n} rows of finite numbers")
    if obj.get("topk") is not None:
        try:
            topk = torch.tensor(obj["topk"], dtype=torch.int64)
        except (TypeError, ValueError, OverflowError):
            raise PoisonlabError("black-box 'topk' must be N rows of integer labels") from None
        if topk.ndim != 2 or len(topk) != n or topk.shape[1] < k:
            raise PoisonlabError(f"black-box 'topk' must be {n} rows of at least {k} labels")
    else:
        topk = probs.topk(min(k, probs.shape[1]), 1).indices
    return Answers(topk, probs)  # every answer given: the rank test uses them all, top-k tests slice


def answer_queries(path, predict, top_k: int = 10, file=None):
    """The command side of the protocol: load the queries at `path`, run predict(float images in [0,1],
    NCHW) -> logits or probabilities (N, C), print {"topk": ..., "probs": ...} as JSON."""
    with np.load(path, allow_pickle=False) as z:
        x = torch.from_numpy(z["images"]).float().div_(255)
    with torch.no_grad():
        out = torch.as_tensor(predict(x)).float()
    p = out if bool(((out >= 0) & (out <= 1)).all()) and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3) \
        else torch.softmax(out, 1)
    json.dump({"topk": p.topk(min(top_k, p.shape[1]), 1).indices.tolist(), "probs": p.tolist()},
              file or sys.stdout)


def open_suspect(model=None, command=None, *, arch=None, width=None, device="cpu", key: OwnershipKey | None = None,
                 timeout=600):
    """A suspect from a model object, a model file, or a black-box command (exactly one)."""
    if (model is None) == (command is None):
        raise PoisonlabError("give exactly one suspect: a model (file) or a black-box command")
    if command is not None:
        if isinstance(command, str) and command.startswith(("http://", "https://")):
            return URLSuspect(command, timeout)
        return CommandSuspect(command, timeout)
    if isinstance(model, (str, Path)):
        model = load_model(model, arch=arch, width=width, device=device,
                           num_classes=key.num_classes if key else None,
                           in_channels=key.image_shape[0] if key else None)
    if not callable(model):
        raise PoisonlabError(f"not a model: {type(model).__name__}")
    return ModelSuspect(model.eval() if hasattr(model, "eval") else model, device)


# ---------------------------------------------------------------------------------------- verdict
@dataclass
class Verdict:
    method: str
    marked: bool
    p_value: float
    alpha: float
    statistic: float
    test: str
    detail: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_MARKED if self.marked else EXIT_NOT_MARKED

    def to_dict(self) -> dict:
        return {"method": self.method, "marked": self.marked, "p_value": self.p_value, "alpha": self.alpha,
                "statistic": self.statistic, "test": self.test, **self.detail}

    def summary(self) -> str:
        d = self.detail
        if self.test.startswith("combined"):
            stat = (f"rank-sum p {d['p_rank']:.3g}, reference rank-sum p {d['p_reference']:.3g}; the smaller, doubled "
                    "(Bonferroni)")
        elif self.test.endswith("rank-sum"):
            against = " against the reference" if self.test.startswith("reference") else ""
            stat = (f"key labels ranked{against} {d['mean_rank']:.2f} on average among {d['num_classes']} classes "
                    f"(expected {d['expected_mean_rank']:.2f} by chance), {d['hits']}/{d['trials']} first")
        elif self.method == "taggants":
            stat = (f"{d['hits']}/{d['trials']} keys answered with their label in the top-{d['top_k']} "
                    f"(expected {d['expected_hits']:.1f} by chance)")
        else:
            stat = (f"t = {self.statistic:.3f} over {d['m']} images; target-class probability "
                    f"{d['mean_p_benign']:.3f} -> {d['mean_p_watermarked']:.3f} with the trigger (margin {d['margin']})")
        word = "MARKED: the model was trained on the marked data" if self.marked else \
            "NOT MARKED: no evidence that the model was trained on the marked data"
        return f"{self.test}: {stat}\np-value {self.p_value:.3g} (alpha {self.alpha:g})\n{word}"


def verify(key, suspect=None, *, command=None, alpha: float = 0.01, top_k: int | None = None, test="auto",
           arch=None, width=None, device="cpu", reference=None) -> Verdict:
    """Test whether `suspect` (a model, a model file, or with command= a black-box command) learned the key.

    key: an OwnershipKey or a key file path; test (taggants): "binomial" (the paper's top-k test), "rank"
    (rank-sum of the key labels, exact too; uses the probabilities, or a label-only suspect's answers) or
    "reference" (rank-sum after subtracting a clean model's log-probabilities on the keys: the key file's
    `reference`, or `reference=` a clean model / model file of the owner's; needs the suspect's probabilities)
    or "combined" (both rank-sums, Bonferroni: p = min(1, 2 min(p_rank, p_reference))); "auto" (default):
    combined when the suspect answers probabilities and a reference is at hand, else rank (a label-only black
    box, an old key file). Returns a Verdict (marked = p < alpha)."""
    if not 0 < alpha < 1:
        raise PoisonlabError(f"alpha must be in (0, 1), got {alpha}")
    if test not in TAGGANT_TESTS:
        raise PoisonlabError(f"test must be one of {', '.join(TAGGANT_TESTS)}, got {test!r}")
    key = key if isinstance(key, OwnershipKey) else load_key(key)
    s = open_suspect(suspect, command, arch=arch, width=width, device=device, key=key)
    if key.method == "taggants":
        k = int(top_k or key.top_k)
        answers = s(key.images, k)
        if test == "auto":  # the most reliable exact test over key draws at CPU scale (docs/ownership.md)
            usable = answers.probs is not None and (reference is not None or key.reference is not None)
            test = "combined" if usable else "rank"
        if test == "binomial":
            res = taggant_test(key, answers.topk, k)
        elif test == "rank":
            res = rank_test(key, answers)
        elif test == "reference":
            res = reference_test(key, answers, reference_of(key, reference, device))
        else:
            res = combined_test(rank_test(key, answers), reference_test(key, answers, reference_of(key, reference, device)))
    else:
        res = backdoor_test(key, s)
    return Verdict(key.method, bool(res.p_value < alpha), res.p_value, float(alpha), res.statistic, res.name,
                   res.detail)


def taggant_test(key: OwnershipKey, topk: torch.Tensor, k: int):
    hits = int((topk[:, :k] == key.labels[:, None]).any(1).sum())
    return binomial_test(hits, len(key.labels), k, key.num_classes)


def key_ranks(labels: torch.Tensor, answers: Answers):
    """(rank of each key label, censor): 1 = first answer. With probabilities every rank is known (ties count
    against the owner, so they can only raise p); with labels only, a label beyond the c answers is c + 1."""
    if answers.probs is not None:
        p = answers.probs.double()
        return (p >= p.gather(1, labels.view(-1, 1))).sum(1), None
    top = answers.topk
    found = top == labels.view(-1, 1)
    pos = torch.where(found.any(1), found.double().argmax(1) + 1, torch.full_like(labels, top.shape[1] + 1))
    return pos, int(top.shape[1])


def rank_test(key: OwnershipKey, answers: Answers):
    ranks, censor = key_ranks(key.labels, answers)
    return rank_sum_test(ranks.numpy(), key.num_classes, censor)


def reference_of(key: OwnershipKey, reference, device="cpu") -> torch.Tensor:
    """The baseline log-probabilities (K, C): from `reference` (a clean model or model file) or the key file."""
    if reference is None:
        if key.reference is None:
            raise PoisonlabError("this key file holds no reference (marked before poisonlab stored one): pass a "
                                 "clean model of yours as the reference, or use --test rank")
        return key.reference
    if isinstance(reference, (str, Path)):
        reference = load_model(reference, num_classes=key.num_classes, in_channels=key.image_shape[0], device=device)
    return reference_logprobs(reference, key.images)


def reference_ranks(labels: torch.Tensor, probs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Rank of each key label (1 = first) by log p_suspect - log p_reference; ties count against the owner."""
    d = probs.double().clamp_min(1e-300).log() - reference.double()
    return (d >= d.gather(1, labels.view(-1, 1))).sum(1)


def reference_test(key: OwnershipKey, answers: Answers, reference: torch.Tensor):
    """Rank-sum of the key labels ranked by log p_suspect - log p_reference (ties count against the owner)."""
    if answers.probs is None:
        raise PoisonlabError("the reference test needs the suspect's probabilities ('probs'); this suspect "
                             "answered labels only: use --test rank or binomial")
    if tuple(answers.probs.shape) != tuple(reference.shape):
        raise PoisonlabError(f"the suspect answered {tuple(answers.probs.shape)} probabilities; the reference "
                             f"has {tuple(reference.shape)}")
    res = rank_sum_test(reference_ranks(key.labels, answers.probs, reference).numpy(), key.num_classes)
    res.name = "reference rank-sum"
    return res


def combined_test(rank, ref):
    """Bonferroni over the two rank-sums: valid whatever their dependence. The plain one gains when the key labels
    happen to be the natural answers to the keys (shared by every model, the surrogate too); the reference one
    loses exactly then and gains otherwise (docs/ownership.md)."""
    p = min(1.0, 2 * min(rank.p_value, ref.p_value))
    detail = {**rank.detail, "p_rank": rank.p_value, "p_reference": ref.p_value, "reference_ranks": ref.detail["ranks"],
              "reference_mean_rank": ref.detail["mean_rank"]}
    return type(rank)(p, p, "combined rank-sum", detail)


def backdoor_test(key: OwnershipKey, suspect):
    benign = suspect(key.verify_images, 1)
    marked = suspect(apply_trigger(key.verify_images, Trigger(key.trigger, key.alpha, key.trigger_kind)), 1)

    def target_score(a: Answers):
        if a.probs is not None:
            return a.probs[:, key.target].numpy()
        return (a.topk[:, 0] == key.target).double().numpy()  # label-only black box: 0/1 target hits
    res = paired_t_test(target_score(marked), target_score(benign), key.margin)
    res.detail["label_only"] = marked.probs is None
    return res
