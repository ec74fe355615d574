"""Batch-wise augmentation: shapes, exactness of crop/flip/cutout, soft labels, gradients."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poisonlab import PoisonlabError
from poisonlab.augment import Augment, cutmix, cutout, mixup, random_crop, random_flip


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(n=32, c=3, h=12, w=12):
    return torch.rand(n, c, h, w, generator=gen(99))


def _find_shift(out, img, pad):
    """The (dy, dx) such that out is img shifted by it with zero fill, or None."""
    h, w = img.shape[-2:]
    padded = F.pad(img, (pad, pad, pad, pad))
    for i in range(2 * pad + 1):
        for j in range(2 * pad + 1):
            if torch.equal(out, padded[:, i:i + h, j:j + w]):
                return i - pad, j - pad
    return None


def test_crop_is_an_exact_shift_chosen_per_image():
    x = batch() + 0.01  # no exact zeros in the content, so the zero fill is unambiguous
    out = random_crop(x, 3, gen())
    assert out.shape == x.shape
    shifts = [_find_shift(o, i, 3) for o, i in zip(out, x)]
    assert None not in shifts  # every output is the input moved, pixels unchanged (no interpolation)
    assert len(set(shifts)) > 5  # offsets are drawn per image, not once per batch
    assert torch.equal(random_crop(x, 0, gen()), x)
    assert torch.equal(random_crop(x, 3, gen(5)), random_crop(x, 3, gen(5)))  # reproducible under a seed


def test_flip_mirrors_some_images_and_keeps_the_rest():
    x = batch(64)
    out = random_flip(x, gen())
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54


def test_cutout_zeroes_one_box():
    x = torch.ones(16, 3, 20, 20)
    out = cutout(x, 6, gen())
    assert out.shape == x.shape
    for o in out:
        zero = o[0] == 0
        assert torch.equal(zero, o[1] == 0) and torch.equal(zero, o[2] == 0)  # all channels alike
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 6 and 1 <= len(cols) <= 6  # clipped at the border, never bigger
        box = torch.zeros_like(zero)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        assert torch.equal(zero, box)  # one solid axis-aligned rectangle; everything else untouched
    inner = [int((o[0] == 0).sum()) for o in out]
    assert 36 in inner  # a box away from the border is the full 6x6


@pytest.mark.parametrize("op", [mixup, cutmix])
def test_mixing_soft_labels_sum_to_one_and_match_the_pixels(op):
    n = 24
    # image i is flat with value i and has its own class i, so labels and pixels can be checked together
    ids = torch.arange(n, dtype=torch.float32)
    x = ids.view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    y = F.one_hot(torch.arange(n), n).float()
    xo, yo = op(x, y, 1.0, gen())
    assert xo.shape == x.shape and yo.shape == y.shape
    assert torch.allclose(yo.sum(1), torch.ones(n)) and (yo >= 0).all()
    assert (yo > 0).sum(1).max() <= 2  # each image mixes with one partner
    # the label weights are exactly the pixel shares: mean pixel value = sum_k weight_k * k
    assert torch.allclose(xo.mean(dim=(1, 2, 3)), yo @ ids, atol=1e-4)
    assert not torch.equal(xo, x)
    if op is cutmix:  # pasted, not blended: every pixel is the image's own or its partner's
        assert all(len(o.unique()) <= 2 for o in xo)
    else:  # one weight per batch, applied to whole images
        assert torch.allclose(xo.amax(dim=(1, 2, 3)), xo.amin(dim=(1, 2, 3)))


@pytest.mark.parametrize("op", [mixup, cutmix])
def test_mixing_depends_only_on_the_generator(op):
    x, y = batch(16), F.one_hot(torch.arange(16) % 4, 4).float()
    torch.manual_seed(1)
    a = op(x, y, 1.0, gen(3))
    torch.manual_seed(2)  # the global RNG must not matter
    b = op(x, y, 1.0, gen(3))
    c = op(x, y, 1.0, gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_full_pipeline_keeps_shape_and_is_differentiable():
    x = batch(8).requires_grad_(True)
    y = torch.arange(8) % 4
    aug = Augment.parse("crop=2,flip,cutout=4,mixup=1.0")
    out, y_soft = aug(x, y, 4, gen())
    assert out.shape == x.shape and y_soft.shape == (8, 4)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_crop_gradient_routes_to_the_kept_pixels():
    x = batch(4).requires_grad_(True)
    out = random_crop(x, 2, gen(1))
    out.sum().backward()
    # every input pixel is kept at most once: gradient 1 where it stayed in frame, 0 where it fell off
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(x.grad.sum(dim=(1, 2, 3)), (out != 0).float().sum(dim=(1, 2, 3)))


def test_geometric_and_no_label_mixing_gives_hard_labels():
    x = batch(8)
    out, y_soft = Augment()(x, torch.zeros(8, dtype=torch.long), 2, gen())
    assert y_soft is None and out.shape == x.shape
    assert torch.equal(Augment.parse("none").geometric(x, gen()), x)


def test_geometric_draws_crop_offsets_then_flips_from_the_stream():
    """The random stream a geometric augmentation takes (one process's, which data-parallel generation keeps):
    row offsets, column offsets, then flips, one each per image, spelled out here independently of the ops."""
    x, g, ref_gen = batch(), gen(3), gen(3)
    out = Augment(crop=3, flip=True).geometric(x, g)
    i, j = (torch.randint(0, 7, (32,), generator=ref_gen) for _ in range(2))
    flip = torch.rand(32, generator=ref_gen) < 0.5
    padded = F.pad(x, (3, 3, 3, 3))
    ref = torch.stack([p[:, a:a + 12, b:b + 12] for p, a, b in zip(padded, i.tolist(), j.tolist())])
    ref = torch.where(flip[:, None, None, None], ref.flip(3), ref)
    assert torch.equal(out, ref) and torch.equal(g.get_state(), ref_gen.get_state())


def test_geometric_draws_apply_to_any_rows():
    """Draws made for a whole batch, applied to some of its rows, give those rows of the whole batch's output
    (and gradients), the generator left where the whole batch leaves it."""
    geo = Augment().geometric
    x = batch(10).requires_grad_(True)
    whole = geo(x, gen(4))
    draws = geo.draw(10, x.device, gen(4))
    rows = torch.tensor([2, 3, 4, 7])
    part = geo.apply(x[rows], {k: v[rows] for k, v in draws.items()})
    assert torch.equal(part, whole[rows])
    (g_whole,) = torch.autograd.grad((whole[rows] ** 2).sum(), x)
    (g_part,) = torch.autograd.grad((part ** 2).sum(), x)
    assert torch.equal(g_whole, g_part)
    assert geo.draw(5, x.device, gen()).keys() == {"crop", "flip"}
    assert Augment.parse("none").geometric.draw(5, x.device, gen()) == {}


def test_training_draws_take_the_stream_in_order():
    """The stream a training batch's augmentation takes (one process's, which data-parallel training keeps),
    spelled out independently of the ops: crop rows, cols, flips, cutout centres (rows, cols), the mixup-or-
    cutmix coin, the Beta weight's seed, cutmix's box centres, the partner permutation."""
    aug, n = Augment.parse("crop=3,flip,cutout=5,mixup=1,cutmix=1"), 10
    kinds = set()
    for seed in range(6):
        g, ref = gen(seed), gen(seed)
        draws = aug.draw(n, (12, 12), "cpu", g)
        i, j = (torch.randint(0, 7, (n,), generator=ref) for _ in range(2))
        flip = torch.rand(n, generator=ref) < 0.5
        cy, cx = (torch.randint(0, 12, (n,), generator=ref) for _ in range(2))
        use_cutmix = bool(torch.rand((), generator=ref) < 0.5)
        lam = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=ref))).beta(1.0, 1.0)
        box = torch.stack([torch.randint(0, 12, (n,), generator=ref) for _ in range(2)], 1) if use_cutmix else None
        perm = torch.randperm(n, generator=ref)
        assert torch.equal(draws["crop"], torch.stack([i, j], 1)) and torch.equal(draws["flip"], flip)
        assert torch.equal(draws["cutout"], torch.stack([cy, cx], 1)) and torch.equal(draws["perm"], perm)
        assert draws["mix"] == ("cutmix" if use_cutmix else "mixup") and draws["lam"] == lam
        assert box is None or torch.equal(draws["box"], box)
        assert torch.equal(g.get_state(), ref.get_state())
        kinds.add(draws["mix"])
    assert kinds == {"mixup", "cutmix"}


@pytest.mark.parametrize("spec", ["standard", "none", "crop=3,flip,cutout=5", "crop=2,cutout=5,mixup=1",
                                  "flip,cutmix=1", "cutout=4,mixup=1,cutmix=1"])
def test_rows_augment_alone_as_in_the_whole_batch(spec):
    """Augment.apply on some rows of a batch (a rank's share) with draws made for the whole batch gives those
    rows of the whole batch's augmentation (images and soft labels), the generator where the whole batch
    leaves it, and loads (so augments) only those rows, plus each mixed row's partner."""
    aug, n = Augment.parse(spec), 10
    x, y = batch(n), torch.arange(n) % 4
    for seed in (1, 2):
        one = gen(seed)
        whole, y_whole = aug(x, y, 4, one)
        for rows in (slice(3, 7), slice(7, 10), torch.tensor([0, 9, 4]), slice(9, 9)):
            g, asked = gen(seed), []
            draws = aug.draw(n, (12, 12), x.device, g)

            def load(r):
                asked.append(torch.arange(n)[r])
                return x[r]
            out, y_soft = aug.apply(load, y, 4, draws, rows)
            assert torch.equal(out, whole[rows]) and torch.equal(g.get_state(), one.get_state())
            assert y_soft is None if y_whole is None else torch.equal(y_soft, y_whole[rows])
            mine = torch.arange(n)[rows]
            assert len(asked) == 1 and torch.equal(asked[0], torch.cat([mine, draws["perm"][mine]]) if "mix" in draws
                                                   else mine)


def test_parse_specs():
    assert Augment.parse("standard") == Augment(crop=4, flip=True)
    assert Augment.parse("none") == Augment(crop=0, flip=False)
    assert Augment.parse("crop,cutout") == Augment(crop=4, flip=False, cutout=16)
    assert Augment.parse("standard,cutmix=0.5") == Augment(crop=4, flip=True, cutmix=0.5)
    with pytest.raises(PoisonlabError, match="unknown augmentation 'blur'"):
        Augment.parse("crop=4,blur")
    with pytest.raises(PoisonlabError, match="crop.*'x'"):
        Augment.parse("crop=x")
    with pytest.raises(PoisonlabError, match=">= 0"):
        Augment.parse("mixup=-1")
