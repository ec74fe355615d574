"""Checks of user-given settings and data shapes, made before any slow work so that nonsense is refused
with a one-line PoisonlabError instead of being run (or crashing deep inside torch)."""

import math
from pathlib import Path

import torch

from . import PoisonlabError

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def check_device(name):
    """A device name torch knows and this machine has ("gpu" and an absent CUDA/MPS are refused)."""
    if name is None or name == "auto":
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise PoisonlabError(f"unknown device {name!r}; use {DEVICES}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PoisonlabError(f"device {name!r} asked for, but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PoisonlabError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise PoisonlabError(f"device {name!r} asked for, but MPS is not available on this machine")
    elif dev.type != "cpu":
        raise PoisonlabError(f"device {name!r} is not supported; use {DEVICES}")
    return name


def check_count(value, what: str, minimum: int = 1):
    """None (not given) or a whole number >= minimum (subset sizes, steps, epochs)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
        raise PoisonlabError(f"{what} must be a whole number, got {value!r}")
    if int(value) < minimum:
        raise PoisonlabError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def check_fraction(value, what: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise PoisonlabError(f"{what} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_model_input(model: torch.nn.Module, shape, what: str = "model"):
    """Run one all-zero image of shape (C, H, W) through model (eval mode, no grad) so that images a model
    cannot take (e.g. 1x1 pixels for a network that pools them away) are refused up front."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=device))
    except (RuntimeError, ValueError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PoisonlabError(f"{what} cannot take {shape[0]}x{shape[1]}x{shape[2]} images ({first}); "
                             "use larger images (e.g. --resize) or another model") from None
    finally:
        model.train(was_training)


def check_train_args(args):
    """`poisonlab train` settings that TrainConfig does not see: sizes, fractions, the result path."""
    check_count(args.subset, "--subset")
    check_count(args.test_subset, "--test-subset")
    if args.clean_data is None and (args.protected_fraction != 1.0 or args.clean_only):
        raise PoisonlabError("--protected-fraction and --clean-only need --clean-data (the clean twin of --data)")
    check_fraction(args.protected_fraction, "--protected-fraction")
    if args.out is not None:
        if str(args.out).strip() in ("", "."):
            raise PoisonlabError("--out must name a result file (e.g. runs/r.json), not empty or '.'")
        if Path(args.out).expanduser().is_dir():
            raise PoisonlabError(f"--out {args.out} is a folder; give the path of a result file (e.g. {args.out}/r.json)")
