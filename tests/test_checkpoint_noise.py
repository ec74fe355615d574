"""Checkpoints keep on-grid noise as int8 levels: 4x smaller, and a resumed run is bit-identical to an
uninterrupted one (CPU, same seed), for the methods whose noise is on the 8-bit grid (min-max-min, REM, TAP)
and for EM, whose float noise is kept as float."""

import pytest
import torch

from poisonlab import create_method
from poisonlab.fileio import load_state
from poisonlab.protect.checkpoint import Checkpoint, pack_noise, unpack_noise

from test_protect import SETTINGS, tiny_set


def bits(t):
    return t.contiguous().view(torch.int32)


def test_pack_restores_the_same_bits():
    g = torch.Generator().manual_seed(0)
    raw = (torch.rand(33, 3, 5, 5, generator=g) * 2 - 1) * 8 / 255
    grid = (raw * 255).round_().div_(255)  # what quantize() makes, -0.0 included
    assert (grid == 0).logical_and(torch.signbit(grid)).any()
    packed = pack_noise(grid)
    assert packed["levels"].dtype == torch.int8 and torch.equal(bits(unpack_noise(packed)), bits(grid))
    assert pack_noise(raw) is None  # off the grid: kept as float by the caller


@pytest.mark.parametrize("method", ["minmaxmin", "em"])
def test_resumed_generation_is_bit_identical(method, tmp_path, monkeypatch):
    data = tiny_set(n=32)
    straight = create_method(method, seed=5, **SETTINGS[method]).generate(data, Checkpoint(None, "k"))
    real, saves = Checkpoint.save, []

    def stop_after_two(self, state, force=False):
        real(self, state, force)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed right after its second checkpoint

    monkeypatch.setattr(Checkpoint, "save", stop_after_two)
    path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        create_method(method, seed=5, **SETTINGS[method]).generate(data, Checkpoint(path, "k", every_seconds=0))
    monkeypatch.setattr(Checkpoint, "save", real)
    stored = load_state(path)
    if method == "minmaxmin":
        assert "noise" not in stored and stored["__noise_levels__"]["levels"].dtype == torch.int8
    resumed = create_method(method, seed=5, **SETTINGS[method]).generate(data, Checkpoint(path, "k", every_seconds=0))
    a, b = (straight[0] if isinstance(straight, tuple) else straight), (resumed[0] if isinstance(resumed, tuple) else resumed)
    assert torch.equal(bits(a.float()), bits(b.float()))
