"""Device, precision and seeding in one place, so every code path is device-agnostic."""

import contextlib
import os
import random

import numpy as np
import torch

from . import PoisonlabError


def pick_device(name: str = "auto") -> torch.device:
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PoisonlabError("--device cuda asked for, but no CUDA device is available")
    return dev


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no grad scaler needed); full precision elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(device: torch.device) -> bool:
    """The one rule: channels_last on CUDA (tensor-core convolutions) and CPU (~20% faster oneDNN
    convolutions); elsewhere (MPS) the default layout."""
    return torch.device(device).type in ("cuda", "cpu")


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last(device) else model


def to_device_images(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last(device) and x.ndim == 4 else x


def to_float_batch(images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """The one batch loader: uint8 images (anywhere) -> float in [0, 1] on `device` (default: where they
    are), in the layout of channels_last(device)."""
    device = images.device if device is None else torch.device(device)
    return to_device_images(images, device).float().div_(255)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads():
    """Respect OMP_NUM_THREADS / POISONLAB_THREADS when set (CI pins 2)."""
    n = os.environ.get("POISONLAB_THREADS")
    if n:
        torch.set_num_threads(int(n))
