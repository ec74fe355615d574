"""bench/speed.py's side-by-side with the authors' min-max-min code (issue 15): the harness imports their
generate.py from a checkout path (never copied), hands it the same images, counts the passes of both loops
and reports the ratio. Their code needs torchvision, which is not installed here, so these tests drive a
stand-in checkout written below with the same interface (get_args(), main(args, logger), utils.get_arch,
utils.data.datasetCIFAR10, one unconditional .cuda()) and the same passes per step as min-max-min."""

import sys
from pathlib import Path

import pytest

from poisonlab import PoisonlabError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import speed  # noqa: E402  (bench/speed.py, a script)

GENERATE = '''
import argparse
import torch
import utils

def get_args():
    p = argparse.ArgumentParser()
    for name in ("--arch", "--save-dir", "--save-name"):
        p.add_argument(name)
    for name in ("--train-steps", "--batch-size", "--pgd-steps", "--samp-num", "--atk-pgd-steps"):
        p.add_argument(name, type=int)
    p.add_argument("--cpu", action="store_true")
    return p.parse_known_args()[0]

def main(args, logger):
    model = utils.get_arch(args.arch, "cifar10")
    data = utils.data.datasetCIFAR10(root=None, train=True, transform=None)
    x = torch.tensor(data.data).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor(data.targets)
    b = args.batch_size
    SEEN.append((tuple(data.data.shape), str(data.data.dtype)))

    def noise(xb, yb):  # pgd steps x samples, each a forward/backward of the batch
        d = torch.zeros_like(xb, requires_grad=True)
        for _ in range(args.pgd_steps * args.samp_num):
            torch.nn.functional.cross_entropy(model(xb + d), yb).backward()

    for step in range(args.train_steps):
        xb, yb = x[step * b:(step + 1) * b], y[step * b:(step + 1) * b]
        noise(xb, yb)
        xb = xb + torch.zeros(1).cuda()  # as theirs: the stored noise moved with an unconditional .cuda()
        for _ in range(args.atk_pgd_steps):
            model(xb.requires_grad_())
        (model(xb).sum() + model(xb).sum()).backward()  # the adversarial and the randomness terms
    for i in range(len(x) // b):
        noise(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])

SEEN = []
'''

TRAIN = '''
import argparse
import torch
import utils

def get_args():
    p = argparse.ArgumentParser()
    for name in ("--arch", "--save-dir", "--save-name", "--data-mode", "--noise-path"):
        p.add_argument(name)
    for name in ("--train-steps", "--batch-size", "--pgd-steps", "--adversarial", "--clean"):
        p.add_argument(name, type=int, default=0)
    p.add_argument("--cpu", action="store_true")
    return p.parse_known_args()[0]

def main(args, logger):
    assert args.clean == 1 and args.data_mode == "whole"  # the images as given, no noise file read
    model = utils.get_arch(args.arch, "cifar10")
    data = utils.data.datasetCIFAR10(root=None, train=True, transform=None)
    x = torch.tensor(data.data).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor(data.targets)
    b = args.batch_size
    for step in range(args.train_steps):
        xb, yb = x[step * b:(step + 1) * b], y[step * b:(step + 1) * b]
        for _ in range(args.pgd_steps if args.adversarial else 0):  # their attacker: a forward/backward per step
            torch.nn.functional.cross_entropy(model(xb.clone().requires_grad_()), yb).backward()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
'''

UTILS = '''
from . import data

def get_arch(arch, dataset):
    raise AssertionError("a NAME:WIDTH spec must not build their model")
'''


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    root = tmp_path / "official"
    (root / "utils").mkdir(parents=True)
    (root / "attacks").mkdir()
    (root / "generate.py").write_text(GENERATE)
    (root / "train.py").write_text(TRAIN)
    (root / "utils" / "__init__.py").write_text(UTILS)
    (root / "utils" / "data.py").write_text("def datasetCIFAR10(root, train, transform):\n    raise OSError('download')\n")
    (root / "attacks" / "__init__.py").write_text("")
    (root / "attacks" / "robust_workers.py").write_text("")
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield root
    for name in list(sys.modules):  # their generic names must not leak into other tests
        if name.split(".")[0] in speed.OFFICIAL_MODULES:
            del sys.modules[name]


def test_official_side_by_side_counts_equal_work(checkout, tmp_path, capsys):
    out = tmp_path / "speed.json"
    speed.main(["--sections", "official", "--official", str(checkout), "--official-models", "smallcnn:0.25",
                "--official-images", "9", "--official-batch", "4", "--official-steps", "2", "--official-noise-steps", "2",
                "--official-eot", "1", "--official-adv-steps", "1", "--rounds", "1", "--device", "cpu", "--out", str(out)])
    row = speed.read_json(out)["official"]["smallcnn:0.25"]
    # 8 images (9 cut to whole batches: their final pass drops a partial one); per step 4 x (2 x 1 + 1 + 2) = 20;
    # the final pass 8 x 2
    assert row["passes"]["official"]["grad"] == row["passes"]["poisonlab"]["grad"] == 2 * 20 + 16
    assert row["equal_work"] and row["poisonlab_throughput_over_official"] > 0
    assert len(row["seconds"]["official"]) == len(row["seconds"]["poisonlab"]) == 1
    assert sys.modules["generate"].SEEN[0] == ((8, 32, 32, 3), "uint8")  # our images, HWC as their loader reads
    assert "poisonlab runs at" in capsys.readouterr().out


def test_official_refuses_what_it_cannot_run(checkout, tmp_path):
    with pytest.raises(PoisonlabError, match="not a checkout"):
        speed.official_generate(tmp_path)
    (checkout / "train.py").unlink()
    with pytest.raises(PoisonlabError, match="train.py not found"):
        speed.official_train(checkout)
    args = speed.argparse.Namespace(official=str(checkout), official_models=["smallcnn"], official_images=4,
                                    official_batch=4, official_steps=1, official_noise_steps=1, official_eot=1,
                                    official_adv_steps=1, rounds=1, official_fp32=False)
    with pytest.raises(PoisonlabError, match="builds only"):
        speed.bench_official(args, speed.torch.device("cpu"))


def test_protection_prints_each_row_beside_the_baseline_it_was_judged_against(tmp_path, capsys):
    """A repeat row (another victim seed) is printed beside the baseline of the same seeds, not seed 0's."""
    study = {"judged_regimes": ["st"], "tolerance_points": 2, "rows": [
        {"variant": "baseline", "last_acc": {"st": 17.8}},
        {"variant": "baseline (victim seed 1)", "last_acc": {"st": 14.0}},
        {"variant": "cheap (victim seed 1)", "last_acc": {"st": 16.5}, "fewer_passes": 3.0,
         "compared_with": "baseline (victim seed 1)", "equal_strength": False}]}
    path = tmp_path / "fewer.json"
    speed.write_json(path, study)
    assert speed.protection(path)["rows"] == study["rows"]
    line = capsys.readouterr().out.strip()
    assert "(baseline (victim seed 1): st 14.0): NOT equal strength" in line and "17.8" not in line


def test_official_victims_count_equal_work_under_st_and_at(checkout, tmp_path, capsys):
    """--official-victim-steps: their train.py against train_victim, the same steps of the same batch."""
    out = tmp_path / "speed.json"
    speed.main(["--sections", "official", "--official", str(checkout), "--official-models", "smallcnn:0.25",
                "--official-images", "4", "--official-batch", "4", "--official-steps", "1", "--official-noise-steps", "1",
                "--official-eot", "1", "--official-adv-steps", "2", "--official-victim-steps", "3", "--rounds", "1",
                "--device", "cpu", "--out", str(out)])
    victims = speed.read_json(out)["official"]["victims"]
    assert victims["images"] == 12
    st, at = victims["st"]["smallcnn:0.25"], victims["at"]["smallcnn:0.25"]
    assert st["passes"]["official"]["grad"] == st["passes"]["poisonlab"]["grad"] == 3 * 4  # 3 steps of 4 images
    assert at["passes"]["official"]["grad"] == at["passes"]["poisonlab"]["grad"] == 3 * 4 * (2 + 1)  # + 2 PGD steps
    assert st["equal_work"] and at["equal_work"] and at["poisonlab_throughput_over_official"] > 0
    assert "--adversarial" in victims["at"]["their_argv"] and victims["at"]["poisonlab_options"]["adv_steps"] == 2
    assert "official victim at smallcnn:0.25" in capsys.readouterr().out
