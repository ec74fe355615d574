"""eot copies batched by device (issue 15): the same augmentations and objective, forwarded as one stacked
batch (GPU) or as separate passes of the batch (CPU, where the stacked batch costs more: bench/speed.py)."""

import pytest
import torch

from poisonlab import PoisonlabError
from poisonlab.augment import Augment
from poisonlab.models import create_model
from poisonlab.pgd import LinfPGD


def setting(mode, steps=2):
    return LinfPGD(8 / 255, alpha=2 / 255, steps=steps, minimize=True, eot=3, augment=Augment().geometric,
                   eot_batching=mode)


def test_auto_is_separate_on_cpu_and_stacked_on_accelerators():
    auto = setting("auto")
    assert auto.separate_passes(torch.device("cpu")) and not auto.separate_passes(torch.device("cuda"))
    assert not auto.separate_passes("mps") and setting("separate").separate_passes("cuda")
    assert not setting("stacked").separate_passes("cpu")
    with pytest.raises(PoisonlabError, match="eot_batching"):
        setting("chunked")


def test_separate_passes_draw_the_same_copies_and_reach_the_same_perturbation():
    torch.manual_seed(0)
    model = create_model("smallcnn", 4, 3, 0.25).eval()
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6) % 4
    sizes, out = {}, {}
    for mode in ("stacked", "separate"):
        seen = []
        handle = model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
        inner = LinfPGD(2 / 255, alpha=1 / 255, steps=1)  # REM-style adversary inside every copy
        gen = torch.Generator().manual_seed(3)
        out[mode] = setting(mode)(model, x, y, gen=gen, inner=lambda xa, ya: inner(model, xa, ya, gen=gen))
        handle.remove()
        sizes[mode] = seen
    # stacked: per step one adversary pass and one loss pass of 3 x 6 images; separate: 3 of each, of 6 images
    assert sizes["stacked"] == [18, 18] * 2 and sizes["separate"] == [6, 6] * 3 * 2
    # Same random stream and objective: only the summation order of the loss may differ (on this CPU build
    # the perturbations are identical to the bit; a sign flip where a gradient is ~0 would be allowed).
    assert (out["stacked"] == out["separate"]).float().mean() > 0.99
