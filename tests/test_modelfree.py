"""Model-free protections (CUDA, LSP, AR, OPS) and SALM through the `protect` pipeline on tiny synthetic data.

Every method writes OUT, its promise is checked here again on the decoded PNGs (independently of the
method's own verify), runs are deterministic under a seed or key, inputs stay untouched, the CUDA key
never lands in OUT, and OPS handles more than ten classes.
"""

import json

import numpy as np
import pytest
import torch

from poisonlab.publishing import noise_path

from conftest import make_set
from poisonlab import PoisonlabError
from poisonlab.budget import budget_to_levels
from poisonlab.cli import main as cli_main
from poisonlab.data import load_dataset, save_imagefolder
from poisonlab import create_method
from poisonlab.protect import protect
from poisonlab.protect.ar import ar_filters, response
from poisonlab.protect.cuda import KEY_SUFFIX, apply_filters, class_filters
from poisonlab.protect.ops import corner_colours
from poisonlab.protect.salm import significance, top_ratio_mask

KEY = "test-key-0123456789abcdef"
SALM_FAST = dict(surrogate="smallcnn", width=0.25, batch_size=16, max_rounds=1, train_steps=2, pgd_steps=2,
                 step_size="2/255")
OPTS = {"cuda": {"key": KEY}, "lsp": {}, "ar": {}, "ops": {}, "salm": SALM_FAST}
CONFIGS = {"rgb-3cls": dict(channels=3, classes=3), "gray-13cls": dict(channels=1, classes=13)}


def dataset(config):
    return make_set(40, size=16, seed=7, **CONFIGS[config])


def saved_images(out_dir, ds):
    """Decode OUT's PNGs and put them in the order of ds."""
    saved = load_dataset(out_dir, "train")
    pos = {n: i for i, n in enumerate(saved.names)}
    return saved.images[torch.tensor([pos[n] for n in ds.names])], saved


_RUNS = {}


def run(tmp_path_factory, method, config, **over):
    """protect() once per distinct setting; returns (dataset, OUT, manifest, images before the run)."""
    kw = {**OPTS[method], **over}
    tag = (method, config, json.dumps(kw, sort_keys=True, default=str))
    if tag not in _RUNS:
        ds = dataset(config)
        before = (ds.images.clone(), ds.labels.clone())
        out = tmp_path_factory.mktemp(f"{method}-{config}") / "out"
        manifest = protect(method, ds, out, progress=False, **kw)
        _RUNS[tag] = (ds, out, manifest, before)
    return _RUNS[tag]


# ------------------------------------------------------------------ every method, both configurations
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("method", sorted(OPTS))
def test_pipeline_writes_out_and_keeps_the_promise(tmp_path_factory, method, config):
    ds, out, manifest, (img0, lab0) = run(tmp_path_factory, method, config)
    assert torch.equal(ds.images, img0) and torch.equal(ds.labels, lab0), "the input was modified"
    assert (out / "manifest.json").is_file() and (noise_path(out)).is_file()
    assert len(list(out.rglob("*.png"))) == len(ds) == manifest["files"]
    saved, loaded = saved_images(out, ds)
    index = {n: i for i, n in enumerate(ds.names)}
    assert all(loaded.classes[int(y)] == ds.classes[int(ds.labels[index[n]])]  # folders sort as text: c10 < c2
               for n, y in zip(loaded.names, loaded.labels))
    d = saved.to(torch.int16) - ds.images.to(torch.int16)
    assert np.array_equal(np.load(noise_path(out)), d.numpy()), "noise.npy is not saved - original"
    per_image_changed = (d != 0).flatten(1).any(1)
    assert per_image_changed.float().mean() >= 0.9, "the method left most images unchanged"
    b = manifest["bound"]
    if method in ("lsp", "salm"):
        assert b["norm"] == "linf" and int(d.abs().max()) <= budget_to_levels(b["eps"])
        assert int(d.abs().max()) >= budget_to_levels(b["eps"]) - 1  # the budget is actually used
    elif method == "ar":
        norms = (d.float() / 255).flatten(1).norm(dim=1)
        assert b["norm"] == "l2" and float(norms.max()) <= b["eps"] + 1e-6
        assert float(norms.median()) >= 0.9 * b["eps"]  # rounding to nearest keeps most of the L2 budget
    elif method == "ops":
        positions = (d != 0).any(dim=1).flatten(1).sum(1)
        assert b["norm"] == "l0" and b["eps"] == 1 and int(positions.max()) <= 1
    elif method == "cuda":
        assert b["norm"] == "none" and "kernel_size" in b
        f = class_filters(KEY, ds.num_classes, ds.shape[0], 3, 0.3)
        expect = apply_filters(ds.images, ds.labels, f, torch.device("cpu"))
        assert int((expect.to(torch.int16) - saved.to(torch.int16)).abs().max()) <= 1
        assert float(d.abs().float().mean()) > 5, "the blur should visibly change random images"


@pytest.mark.parametrize("method", sorted(OPTS))
def test_deterministic_under_seed_or_key(tmp_path_factory, method):
    _, out_a, man_a, _ = run(tmp_path_factory, method, "rgb-3cls")
    _, out_b, man_b, _ = run(tmp_path_factory, method, "rgb-3cls", seed=0)  # same setting, written again
    assert np.array_equal(np.load(noise_path(out_a)), np.load(noise_path(out_b)))
    if method == "ops":  # OPS has no randomness: position and colour come from the data alone
        return
    other = {"key": KEY[::-1]} if method == "cuda" else {"seed": 1}
    _, out_c, _, _ = run(tmp_path_factory, method, "rgb-3cls", **other)
    assert not np.array_equal(np.load(noise_path(out_a)), np.load(noise_path(out_c)))


# ------------------------------------------------------------------ CUDA key handling
def _all_bytes(folder):
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_cuda_generated_key_lives_beside_out_never_inside(tmp_path):
    ds = dataset("rgb-3cls")
    out = tmp_path / "prot"
    manifest = protect("cuda", ds, out, progress=False)
    key_file = tmp_path / ("prot" + KEY_SUFFIX)
    key = key_file.read_text().strip()
    assert len(key) >= 32 and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert not any(p.name.endswith(KEY_SUFFIX) for p in out.rglob("*"))
    assert key.encode() not in _all_bytes(out)
    assert manifest["bound"]["key_source"] == "generated"
    assert "private" in manifest["params"]["key"] and key not in json.dumps(manifest)
    # the written key reproduces the output exactly
    again = protect("cuda", ds, tmp_path / "again", progress=False, key=key)
    assert np.array_equal(np.load(noise_path(out)), np.load(noise_path(tmp_path / "again")))


def test_cuda_refuses_key_file_inside_out(tmp_path):
    ds = dataset("rgb-3cls")
    out = tmp_path / "prot"
    for inside in (out / "secret.key", out / "sub" / "k.txt"):
        with pytest.raises(PoisonlabError, match="inside the output"):
            protect("cuda", ds, out, progress=False, key_file=str(inside))
        assert not inside.exists()
    assert not out.exists() or not any(out.iterdir())


def test_cuda_key_file_is_read_back_and_cli_works(tmp_path):
    ds = dataset("rgb-3cls")
    key_file = tmp_path / "keys" / "mine.key"
    first = protect("cuda", ds, tmp_path / "a", progress=False, key_file=str(key_file))
    assert first["bound"]["key_source"] == "generated" and key_file.is_file()
    second = protect("cuda", ds, tmp_path / "b", progress=False, key_file=str(key_file))
    assert second["bound"]["key_source"] == "file"
    assert np.array_equal(np.load(noise_path(tmp_path / "a")), np.load(noise_path(tmp_path / "b")))
    # the command line: an ImageFolder input, key file given as an option
    save_imagefolder(ds, tmp_path / "data")
    rc = cli_main(["protect", "--method", "cuda", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c"),
                   "--opt", f"key_file={key_file}", "--no-progress"])
    assert rc == 0
    assert torch.equal(saved_images(tmp_path / "a", ds)[0], saved_images(tmp_path / "c", ds)[0])
    assert key_file.read_text().strip().encode() not in _all_bytes(tmp_path / "c")


def test_cuda_rejects_bad_settings():
    with pytest.raises(PoisonlabError, match="no additive noise budget"):
        create_method("cuda", eps=8 / 255)
    with pytest.raises(PoisonlabError, match="at least 16"):
        create_method("cuda", key="short")
    with pytest.raises(PoisonlabError, match="not both"):
        create_method("cuda", key=KEY, key_file="x.key")


def test_cuda_filters_are_normalised_per_class_and_key_dependent():
    f = class_filters(KEY, 13, 3, 5, 0.3)
    assert f.shape == (13, 3, 5, 5) and bool((f >= 0).all())
    assert torch.allclose(f.sum(dim=(2, 3)), torch.ones(13, 3, dtype=torch.float64))
    assert len({tuple(f[k].flatten().tolist()) for k in range(13)}) == 13
    assert torch.equal(f, class_filters(KEY, 13, 3, 5, 0.3))
    assert not torch.equal(f, class_filters(KEY + "x", 13, 3, 5, 0.3))


# ------------------------------------------------------------------ OPS, LSP, AR, SALM specifics
def test_ops_more_than_ten_classes_one_pixel_per_class(tmp_path_factory):
    ds, out, manifest, _ = run(tmp_path_factory, "ops", "gray-13cls")
    saved, _ = saved_images(out, ds)
    m = create_method("ops")
    pos, col = m.search(ds)
    assert pos.shape == (13, 1)
    pairs = {(int(p), int(c)) for p, c in zip(pos[:, 0], col[:, 0])}
    assert len(pairs) == 13, "two classes share a (position, colour) pair"
    values = (corner_colours(1) * 255).to(torch.uint8)
    flat = saved.view(len(ds), 1, -1)
    for i in range(len(ds)):
        k = int(ds.labels[i])
        assert torch.equal(flat[i, :, pos[k, 0]], values[col[k, 0]])
    # 3 channels, 13 classes, bigger image: works too and stays within L0 = 1
    big = make_set(52, classes=13, channels=3, size=20, seed=3)
    out2 = tmp_path_factory.mktemp("ops-big") / "out"
    protect("ops", big, out2, progress=False)
    d = np.load(noise_path(out2))
    assert int((d != 0).any(axis=1).reshape(len(big), -1).sum(1).max()) == 1


def test_lsp_noise_is_linearly_separable_by_class(tmp_path_factory):
    ds, out, _, _ = run(tmp_path_factory, "lsp", "gray-13cls")
    noise = torch.from_numpy(np.load(noise_path(out))).float().flatten(1)
    centres = torch.stack([noise[ds.labels == k].mean(0) for k in range(ds.num_classes)])
    pred = torch.cdist(noise, centres).argmin(1)
    assert torch.equal(pred, ds.labels)


def test_ar_noise_answers_its_own_class_filter():
    ds = make_set(60, classes=13, channels=3, size=16, seed=5)
    m = create_method("ar", seed=0)
    delta = m.perturb(ds, None)
    assert m.coefficients.shape == (13, 3, 3, 3)
    assert torch.allclose(m.coefficients[..., :2, :].sum(dim=(2, 3)) + m.coefficients[..., 2, :2].sum(-1),
                          torch.ones(13, 3, dtype=torch.float64))
    norms = delta.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, m.eps))
    r = response(ar_filters(m.coefficients), delta)  # (images, classes)
    assert bool((r.argmin(1) == ds.labels).all()), "a class's AR filter should answer least on its own noise"


def test_salm_changes_only_masked_pixels(tmp_path_factory):
    ds, out, manifest, _ = run(tmp_path_factory, "salm", "gray-13cls")
    saved, _ = saved_images(out, ds)
    mask = top_ratio_mask(significance(ds.images, "gradient"), manifest["params"]["ratio"])
    assert float(mask.mean()) == pytest.approx(0.3, abs=0.01)
    changed = (saved != ds.images).any(dim=1, keepdim=True)
    assert not bool((changed & (mask == 0)).any())
    assert manifest["bound"]["mask"]["ratio"] == 0.3 and manifest["surrogate"]["model"] == "smallcnn"


def test_ar_refuses_an_unreachable_stability_bound():
    ds = make_set(20, classes=2, channels=1, size=8, seed=1)
    with pytest.raises(PoisonlabError, match="stable"):
        create_method("ar", gen_rms_bound=1e-9).perturb(ds, None)
