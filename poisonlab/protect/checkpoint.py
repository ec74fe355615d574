"""Resumable progress for long generation runs: atomic, throttled torch.save of a method's state.

A checkpoint holds the noise made so far, so it is a private file (0600 from creation). It is read with
torch.load(weights_only=True): tensors, dicts, lists, numbers and strings only, so a checkpoint planted in
the work folder cannot run code. States must be built from those types (RNG states are uint8 tensors).
"""

import time
from pathlib import Path

import torch

from .. import PoisonlabError
from ..fileio import load_state, save_state

_BITS = 2 ** torch.arange(7, -1, -1, dtype=torch.uint8)


def pack_noise(noise: torch.Tensor):
    """The noise as int8 levels of the 8-bit grid (4x less than float32 on disk) when every value is
    exactly level/255 (plus a bitmask of the zeros that are -0.0); None when it is not, e.g. float noise
    during an EM run: the caller then keeps the float tensor. Either way a load restores the same bits."""
    if not noise.is_floating_point() or noise.dtype == torch.float64:
        return None
    noise = noise.detach().cpu().float()
    levels = torch.empty(noise.shape, dtype=torch.int8)
    negzero = torch.zeros(noise.shape, dtype=torch.bool)
    for s in range(0, max(len(noise), 1), 1024):  # in chunks: no full-size float temporaries
        part = noise[s:s + 1024]
        lv = (part * 255).round()
        if lv.abs().max().item() > 127 or not torch.equal(lv / 255, part):
            return None
        levels[s:s + 1024] = lv.to(torch.int8)
        negzero[s:s + 1024] = (part == 0) & torch.signbit(part)
    packed = {"levels": levels}
    if negzero.any():
        bits = torch.nn.functional.pad(negzero.flatten().to(torch.uint8), (0, -negzero.numel() % 8))
        packed["negzero"] = (bits.view(-1, 8) * _BITS).sum(1, dtype=torch.uint8)
    return packed


def unpack_noise(packed: dict) -> torch.Tensor:
    noise = packed["levels"].float() / 255
    if "negzero" in packed:
        bits = ((packed["negzero"][:, None] & _BITS) > 0).flatten()[:noise.numel()].view(noise.shape)
        noise[bits] = -0.0
    return noise


class Checkpoint:
    """state = ckpt.load() at start (None if fresh); ckpt.save(state) as work proceeds.

    key identifies the run's configuration; a checkpoint of another configuration is refused rather than
    silently mixed in. path=None disables checkpointing (tests, in-memory use).
    """

    writes = True  # False: see reader()

    def __init__(self, path: Path | None, key: str, every_seconds: float = 30.0):
        self.path, self.key, self.every = (Path(path) if path else None), key, every_seconds
        self._last = self._start = time.monotonic()
        self._before = 0.0  # seconds spent by earlier (interrupted) runs, restored by load()

    def elapsed(self) -> float:
        """Generation time across resumes (up to the last save of each interrupted run)."""
        return self._before + time.monotonic() - self._start

    def reader(self) -> "Checkpoint":
        """The same checkpoint, loaded but never written (data-parallel ranks other than 0)."""
        other = Checkpoint(self.path, self.key, self.every)
        other.writes = False
        return other

    def load(self):
        if self.path is None or not self.path.exists():
            return None
        state = load_state(self.path)
        if state.get("__key__") != self.key:
            raise PoisonlabError(f"checkpoint {self.path} was made with other settings; remove it or drop --resume")
        self._before = float(state.get("__elapsed__", 0.0))
        if "__noise_levels__" in state:
            state["noise"] = unpack_noise(state.pop("__noise_levels__"))
        return state

    def save(self, state, force: bool = False):
        """state: a dict, or a callable returning one (built only when a save is due)."""
        if self.path is None or not self.writes or (not force and time.monotonic() - self._last < self.every):
            return
        state = dict(state() if callable(state) else state)
        packed = pack_noise(state["noise"]) if isinstance(state.get("noise"), torch.Tensor) else None
        if packed is not None:  # the noise on the 8-bit grid it is published on: int8 levels
            state["__noise_levels__"] = packed
            del state["noise"]
        save_state(self.path, {**state, "__key__": self.key, "__elapsed__": self.elapsed()})
        self._last = time.monotonic()
