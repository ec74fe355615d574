"""The library API: registries (aliases, labels, overwrite warning, options, plugins), protections called on
tensors, publish, and train_victim on tensors with a user's model and hooks."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import poisonlab as pl
from conftest import make_set
from poisonlab import PoisonlabError
from poisonlab.bench import parse_config, run_grid
from poisonlab.data import ImageSet, load_dataset
from poisonlab.registry import Registry, load_plugins

FAST = dict(model="smallcnn", width=0.25, batch_size=16)


# ------------------------------------------------------------------ registry
def test_registry_names_aliases_labels_and_options():
    r = Registry("widget")

    @r.register(aliases=("w1",), label="Widget One")
    class One:
        name = "one"

        def __init__(self, size=3, *, colour="red"):
            self.size, self.colour = size, colour

    @r.register
    def two(depth=1):
        return ("two", depth)

    assert r.names() == ["one", "two"] and r.get("w1") is One and r.resolve("w1") == "one"
    assert r.label("w1") == "Widget One" and r.label("two") == "two" and r.aliases("one") == ["w1"]
    assert pl.METHODS.label("minmaxmin") == "min-max-min" and pl.METHODS.label("em") == "EM"
    assert r.create("w1", colour="blue").colour == "blue" and r.create("two", depth=4) == ("two", 4)
    with pytest.raises(PoisonlabError, match=r"unknown option\(s\) \['colur'\]; it takes \['colour', 'size'\]"):
        r.create("one", colur="blue")
    with pytest.raises(PoisonlabError, match="unknown widget 'three'; choose from one, two"):
        r.get("three")
    assert "one" in r and "w1" in r and "three" not in r

    class Other:
        name = "one"

    with pytest.warns(UserWarning, match="overwriting widget 'one'"):
        r.register(Other)
    assert r.get("one") is Other and r.get("w1") is Other  # an alias names the name, whoever holds it
    r.unregister("two")
    assert "two" not in r


def test_builtin_registries_are_complete_and_refuse_bad_options():
    assert {"random", "em", "minmaxmin", "rem", "tap", "cuda", "lsp", "ar", "ops", "salm"} <= set(pl.METHODS.names())
    assert {"smallcnn", "resnet18"} <= set(pl.MODELS.names())
    assert {"none", "jpeg", "ueraser", "at"} <= set(pl.DEFENSES.names()) and pl.DEFENSES.get("grayscale").name == "gray"
    with pytest.raises(PoisonlabError, match="unknown option"):
        pl.create_method("random", epz=0.1)
    with pytest.raises(PoisonlabError, match="jpeg"):
        pl.create_defense("jpeg", quality=0)


def _fake_distribution(root, body):
    """A package `plugdemo` with a `poisonlab.plugins` entry point, as pip would install it."""
    (root / "plugdemo").mkdir()
    (root / "plugdemo" / "__init__.py").write_text(textwrap.dedent(body))
    info = root / "plugdemo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugdemo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[poisonlab.plugins]\nplugdemo = plugdemo\n")


PLUGIN = '''
    import torch
    from poisonlab.protect import Protection
    from poisonlab.registry import METHODS

    @METHODS.register(label="Plug")
    class PlugNoise(Protection):
        """A plugin method: a constant +eps shift."""
        name = "plugnoise"

        def perturb(self, data, ckpt):
            return torch.full((len(data), *data.shape), self.eps)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugins(force=True)
    yield tmp_path
    pl.METHODS.unregister("plugnoise")
    sys.modules.pop("plugdemo", None)


def test_a_plugin_method_is_found_through_its_entry_point(plugin):
    assert "plugnoise" in pl.METHODS.names() and pl.METHODS.label("plugnoise") == "Plug"
    data = make_set(8)
    r = pl.create_method("plugnoise", eps="2/255")(data)
    assert int(r.noise.max()) == 2 and len(r.poisoned) == 8


def test_a_broken_plugin_warns_and_the_rest_still_works(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "raise ImportError('missing dependency')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="plugdemo.*missing dependency"):
        load_plugins(force=True)
    sys.modules.pop("plugdemo", None)
    assert "random" in pl.METHODS.names()


# ------------------------------------------------------------------ tensor-first protection
def test_method_on_uint8_and_float_tensors():
    data = make_set(12)
    m = pl.create_method("random", eps="4/255", seed=3)
    r = m(data.images, data.labels)
    assert isinstance(r, pl.PoisonResult) and r.images.dtype == torch.uint8 and r.images.shape == data.images.shape
    assert torch.equal(r.labels, data.labels) and int(r.noise.abs().max()) <= 4
    assert torch.equal(r.images.to(torch.int16) - data.images.to(torch.int16), r.noise)
    assert r.meta["method"] == "random" and r.meta["bound"]["levels"] == 4 and "diagnostics" in r.meta
    assert r.poisoned.tolist() == list(range(12))
    # floats in [0,1] are put on the 8-bit grid first: the same images give the same result
    r2 = m(data.images.float() / 255, data.labels)
    assert torch.equal(r2.images, r.images)
    x_p, y_p = m.poison(data.images.float() / 255, data.labels)
    assert x_p.dtype == torch.float32 and torch.equal((x_p * 255).round().to(torch.uint8), r.images)
    assert torch.equal(y_p, data.labels) and m.poison(data.images, data.labels)[0].dtype == torch.uint8
    for bad in (data.images.float(), data.images[0], "x"):
        with pytest.raises(PoisonlabError):
            m(bad, data.labels)
    with pytest.raises(PoisonlabError, match="labels"):
        m(data.images)


def test_a_users_module_as_surrogate_is_not_trained_in_place():
    torch.manual_seed(0)
    mine = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    data = make_set(16)
    m = pl.create_method("em", eps="8/255", surrogate=mine, batch_size=8, train_steps=2, pgd_steps=2, max_rounds=1)
    r = m(data)
    assert int(r.noise.abs().max()) <= 8 and r.noise.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in mine.state_dict().items())
    assert r.meta["params"]["surrogate"] == "custom:Sequential" and r.meta["surrogate"]["model"] == "custom:Sequential"
    json.dumps(r.meta)  # the manifest can hold it


def test_publish_writes_the_tree_and_keeps_secrets_and_noise_out(tmp_path):
    data = make_set(12)
    r = pl.create_method("random", eps="8/255")(data)
    manifest = pl.publish(r, tmp_path / "out")
    saved = load_dataset(tmp_path / "out", "train")
    assert sorted(saved.names) == sorted(data.names) and manifest["files"] == 12
    order = [data.names.index(n) for n in saved.names]
    assert torch.equal(saved.images, r.images[order])
    assert (tmp_path / "out.noise.npy").exists() and not any(p.suffix == ".npy" for p in (tmp_path / "out").rglob("*"))
    assert (tmp_path / "out.noise.npy").stat().st_mode & 0o077 == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["method"] == "random"
    r.secrets = {"key": "cuda-0123456789abcdef"}
    r.meta["params"] = {"key": "cuda-0123456789abcdef"}
    with pytest.raises(PoisonlabError, match="secret"):
        pl.publish(r, tmp_path / "leak")
    assert not (tmp_path / "leak").exists()


def test_published_relabelled_samples_move_to_their_new_class_folder(tmp_path):
    data = make_set(8)
    r = pl.create_method("random", eps="8/255")(data)
    r.original_labels = data.labels.clone()
    r.labels = data.labels.clone()
    r.labels[0] = 3
    manifest = pl.publish(r, tmp_path / "out", noise=False)
    saved = load_dataset(tmp_path / "out", "train")
    moved = f"c3/{data.classes[int(data.labels[0])]}-0000.png"
    assert manifest["labels_changed"] == 1 and moved in saved.names
    assert manifest["noise_file"] is None and not (tmp_path / "out.noise.npy").exists()  # says no noise was kept
    assert int(saved.labels[saved.names.index(moved)]) == 3


def test_relabelled_samples_do_not_collide_with_files_of_the_same_name(tmp_path):
    data = make_set(8)  # labels 0,1,2,3,0,1,2,3: each class folder holds a 0.png and another file
    data.names = [f"{data.classes[int(y)]}/{0 if i < 4 else i}.png" for i, y in enumerate(data.labels)]
    r = pl.create_method("random", eps="8/255")(data)
    r.original_labels, r.labels = data.labels.clone(), data.labels.clone()
    r.labels[:4] = (data.labels[:4] + 1) % 4  # each 0.png moves into a folder that has its own 0.png
    pl.publish(r, tmp_path / "out", noise=False)
    saved = load_dataset(tmp_path / "out", "train")
    assert len(saved) == 8 and len(set(saved.names)) == 8
    assert all(int(saved.labels[saved.names.index(f"{data.classes[(k + 1) % 4]}/{data.classes[k]}-0.png")]) == (k + 1) % 4
               for k in range(4))


# ------------------------------------------------------------------ training on tensors, hooks
def test_train_victim_on_tensors_with_a_users_model():
    train, test = make_set(32, learnable=True, seed=1), make_set(16, learnable=True, seed=2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    w0 = net[1].weight.detach().clone()
    r = pl.train_victim((train.images.float() / 255, train.labels), (test.images, test.labels),
                        pl.TrainConfig(epochs=2, **FAST), progress=False, model=net)
    assert not torch.equal(net[1].weight.detach().cpu(), w0)  # the user's model was trained
    assert r["config"]["model"] == "custom:Sequential" and len(r["history"]) == 2


def test_train_victim_refuses_a_single_class_set():
    data = make_set(8)
    one = ImageSet(data.images, torch.zeros(8, dtype=torch.long), ["unlabelled"], data.names)
    with pytest.raises(PoisonlabError, match="at least 2"):
        pl.train_victim(one, None, pl.TrainConfig(epochs=1, **FAST), progress=False)


class Recorder:
    """Counts steps, stops after the first epoch, and trains on the first half of the data only."""

    def __init__(self):
        self.steps, self.seen = 0, set()

    def select(self, epoch, state):
        return torch.arange(state.num_samples // 2)

    def after_step(self, state):
        self.steps += 1
        self.seen |= set(state.index.tolist())
        assert state.losses.shape == state.index.shape

    def after_epoch(self, epoch, record, state):
        record["recorder_steps"] = self.steps
        state.stop = True


def test_hooks_select_samples_see_every_step_and_stop_early(tiny_set):
    h = Recorder()
    r = pl.train_victim(tiny_set, None, pl.TrainConfig(epochs=3, **FAST), progress=False, hooks=[h])
    assert len(r["history"]) == 1 and r["history"][0]["recorder_steps"] == h.steps == 2  # 20 samples, batch 16
    assert h.seen == set(range(20))


class ZeroWeights:
    def select(self, epoch, state):
        return torch.zeros(state.num_samples)


def test_hook_weights_scale_the_loss(tiny_set):
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    w0 = net[1].weight.detach().clone()
    cfg = pl.TrainConfig(epochs=1, weight_decay=0.0, **FAST)
    pl.train_victim(tiny_set, None, cfg, progress=False, hooks=[ZeroWeights()], model=net)
    assert torch.equal(net[1].weight.detach().cpu(), w0)  # zero weight on every sample: nothing learned


def test_hook_errors(tiny_set):
    with pytest.raises(PoisonlabError, match="not a training hook"):
        pl.train_victim(tiny_set, None, pl.TrainConfig(epochs=1, **FAST), progress=False, hooks=[object()])
    with pytest.raises(PoisonlabError, match="at most one hook"):
        pl.train_victim(tiny_set, None, pl.TrainConfig(epochs=1, **FAST), progress=False,
                        hooks=[ZeroWeights(), ZeroWeights()])


def test_a_plugin_method_is_listed_by_the_cli_and_runs_in_a_one_cell_grid(plugin, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin), *sys.path]), POISONLAB_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "poisonlab", "methods"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("plugnoise"))
    assert "Plug" in line and "A plugin method" in line
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", train_images=x, train_labels=y, test_images=x[:20], test_labels=y[:20])
    cfg = parse_config({"name": "plug", "data": {"source": str(tmp_path / "d.npz")},
                        "train": {"model": "smallcnn", "width": 0.25, "epochs": 1, "batch_size": 20},
                        "experiments": [{"name": "one", "layout": "defenses", "methods": ["plugnoise"],
                                         "budgets": ["2/255"], "defenses": ["none"]}]}, tmp_path / "plug.json")
    res = run_grid(cfg, out=tmp_path / "out", progress=False, log=lambda *a: None)
    assert res["trained"] == 1 and res["missing"] == 0 and len(res["rows"]) == 1
    row = res["rows"][0]
    assert row["method"] == "plugnoise" and row["last_acc"] is not None
    manifest = json.loads(next((tmp_path / "out" / "cache" / "protected").glob("plugnoise-*/manifest.json")).read_text())
    assert manifest["method"] == "plugnoise" and manifest["bound"]["levels"] == 2
    assert "| Plug |" in (tmp_path / "out" / "tables.md").read_text()  # the plugin's own display label
