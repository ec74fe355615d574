"""`poisonlab poison`: PNG tree + manifest with the targets; the trigger stays a private file beside OUT."""

import json
import os
import stat

import torch

from poisonlab.attacks.backdoor import apply_trigger, load_trigger
from poisonlab.cli import main
from poisonlab.data import load_dataset


def test_poison_badnets_writes_tree_manifest_and_private_trigger(tiny_tree, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["poison", "--attack", "badnets", "--data", str(tiny_tree), "--out", str(out),
               "--opt", "poison_rate=0.25", "--opt", "target_class=1"])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    assert man["attack"] == "badnets" and man["num_poisoned"] == 12 and "trigger_seed" not in json.dumps(man)
    secret = tmp_path / "out.trigger.npz"
    assert secret.exists() and stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert not any(p.suffix == ".npz" for p in out.rglob("*"))
    trig = load_trigger(secret)
    poisoned = load_dataset(out, "train")
    clean = load_dataset(tiny_tree / "train", "train")
    assert int((poisoned.labels == 1).sum()) == int((clean.labels == 1).sum()) + 12
    # every relabelled image carries the trigger
    stamped = apply_trigger(poisoned.images, trig)
    moved = poisoned.labels == 1
    assert sum(bool(torch.equal(stamped[i], poisoned.images[i])) for i in torch.nonzero(moved).flatten()) >= 12


def test_poison_targeted_records_targets_and_refuses_missing_ones(tiny_tree, tmp_path, capsys):
    out = tmp_path / "t"
    rc = main(["poison", "--attack", "random-poison", "--data", str(tiny_tree), "--out", str(out),
               "--targets", "0,5", "--adversarial", "2,3", "--eps", "8/255", "--opt", "budget=0.0625"])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    t = man["targets"]
    assert [d["id"] for d in t] == [0, 5] and [d["adversarial_class"] for d in t] == [2, 3]
    assert len(t[0]["poisons"]) == 3 and man["bound"]["eps_text"] == "8/255"
    rc = main(["poison", "--attack", "witches-brew", "--data", str(tiny_tree), "--out", str(tmp_path / "x")])
    assert rc == 2 and "--targets" in capsys.readouterr().err
    rc = main(["poison", "--attack", "random-poison", "--data", str(tiny_tree), "--out", str(tmp_path / "y"),
               "--targets", "0", "--adversarial", "0"])
    assert rc == 2 and "own class" in capsys.readouterr().err
