"""Resumable progress for long generation runs: atomic, throttled torch.save of a method's state.

A checkpoint holds the noise made so far, so it is a private file (0600 from creation). It is read with
torch.load(weights_only=True): tensors, dicts, lists, numbers and strings only, so a checkpoint planted in
the work folder cannot run code. States must be built from those types (RNG states are uint8 tensors).
"""

import time
from pathlib import Path

from .. import PoisonlabError
from ..fileio import load_state, save_state


class Checkpoint:
    """state = ckpt.load() at start (None if fresh); ckpt.save(state) as work proceeds.

    key identifies the run's configuration; a checkpoint of another configuration is refused rather than
    silently mixed in. path=None disables checkpointing (tests, in-memory use).
    """

    def __init__(self, path: Path | None, key: str, every_seconds: float = 30.0):
        self.path, self.key, self.every = (Path(path) if path else None), key, every_seconds
        self._last = self._start = time.monotonic()
        self._before = 0.0  # seconds spent by earlier (interrupted) runs, restored by load()

    def elapsed(self) -> float:
        """Generation time across resumes (up to the last save of each interrupted run)."""
        return self._before + time.monotonic() - self._start

    def load(self):
        if self.path is None or not self.path.exists():
            return None
        state = load_state(self.path)
        if state.get("__key__") != self.key:
            raise PoisonlabError(f"checkpoint {self.path} was made with other settings; remove it or drop --resume")
        self._before = float(state.get("__elapsed__", 0.0))
        return state

    def save(self, state, force: bool = False):
        """state: a dict, or a callable returning one (built only when a save is due)."""
        if self.path is None or (not force and time.monotonic() - self._last < self.every):
            return
        state = state() if callable(state) else state
        save_state(self.path, {**state, "__key__": self.key, "__elapsed__": self.elapsed()})
        self._last = time.monotonic()
