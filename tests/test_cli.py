"""`poisonlab train` end to end: RESULT line, JSON output, partial protection, and clean error reporting."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_set
from poisonlab.cli import main
from poisonlab.data import save_imagefolder

FAST = ["--model", "smallcnn", "--width", "0.25", "--epochs", "1", "--batch-size", "16", "--no-progress"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is runs/... under the working directory


def run_train(capsys, *args):
    rc = main(["train", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_prints_result_and_writes_json(tiny_tree, tmp_path, capsys):
    out_json = tmp_path / "res" / "r.json"
    rc, out, err = run_train(capsys, "--data", str(tiny_tree), *FAST, "--out", str(out_json), "--lr", "0.05")
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1 and "smallcnn w=0.25" in lines[0] and "n=48" in lines[0] and str(out_json) in lines[0]
    res = json.loads(out_json.read_text())
    assert res["train_size"] == 48 and res["test_size"] == 24 and len(res["history"]) == 1
    assert res["config"]["width"] == 0.25 and res["data"] == str(tiny_tree)
    assert f"last {res['last_acc']:.2f}%" in lines[0]


def test_train_subsets_adversarial_and_separate_test_data(tiny_tree, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    rc, out, err = run_train(capsys, "--data", str(tiny_tree / "train"), "--test-data", str(tiny_tree / "test"),
                             "--subset", "20", "--test-subset", "8", "--adv-eps", "4/255", "--adv-steps", "2",
                             *FAST, "--out", str(out_json))
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    assert (res["train_size"], res["test_size"]) == (20, 8)
    assert res["config"]["adv_eps"] == pytest.approx(4 / 255) and "AT linf eps=4.00/255" in out


def test_train_partial_protection(tiny_tree, tmp_path, capsys):
    clean = tiny_tree / "train"
    prot = tmp_path / "prot"
    ds = make_set(48, learnable=True, seed=1)
    save_imagefolder(ds.with_images(255 - ds.images), prot / "train")
    out_json = tmp_path / "r.json"
    rc, out, err = run_train(capsys, "--data", str(prot), "--test-data", str(tiny_tree / "test"), "--clean-data",
                             str(clean), "--protected-fraction", "0.5", "--subset", "24", *FAST,
                             "--out", str(out_json))
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    assert res["train_size"] == 24 and res["config"]["extra"]["protected_fraction"] == 0.5


@pytest.mark.parametrize("args,message", [
    (["--data", "{tmp}/nope"], "not found"),
    (["--data", "{tree}", "--adv-eps", "lots"], "--adv-eps"),
    (["--data", "{tree}", "--epochs", "abc"], "--epochs"),
    (["--data", "{tree}", "--epochs", "-3"], "--epochs"),
    (["--data", "{tree}", "--lr", "nan"], "--lr"),
    (["--data", "{tree}", "--schedule", "steps"], "--schedule"),
    (["--data", "{tree}", "--augment", "crop=big"], "crop"),
    (["--data", "{tree}", "--resize", "32"], "HxW"),
    (["--data", "{tree}", "--model", "nonet"], "unknown model"),
    (["--data", "{tree}", "--epochs", "0"], "epochs"),
    (["--data", "{tree}/train"], "no test split"),
    (["--data", "{tree}", "--clean-data", "{tree}", "--protected-fraction", "2"], "fraction"),
    (["--data", "{tree}", "--out", "{tmp}"], "{tmp}"),  # --out is an existing folder
])
def test_bad_input_is_one_error_line(tiny_tree, tmp_path, capsys, args, message):
    fill = {"tmp": str(tmp_path), "tree": str(tiny_tree)}
    rc, out, err = run_train(capsys, *FAST, *[a.format(**fill) for a in args])  # later flags win
    assert rc == 2
    assert err.startswith("poisonlab: error:") and message.format(**fill) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_console_entry_reports_errors_without_traceback(tmp_path):
    env = dict(os.environ, POISONLAB_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "poisonlab", "train", "--data", str(tmp_path / "missing")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("poisonlab: error: data not found")
    assert "Traceback" not in p.stderr and "RESULT" not in p.stdout


def test_models_command_lists_models(capsys):
    assert main(["models"]) == 0
    assert {"smallcnn", "resnet18"} <= set(capsys.readouterr().out.split())


@pytest.mark.parametrize("opt,message", [
    ("train_steps=abc", "train_steps: 'abc' is not a whole number >= 0"),
    ("train_steps=-3", "train_steps: '-3' is not a whole number >= 0"),
    ("lr=nan", "lr: 'nan' is not a finite number >= 0"),
    ("augment=maybe", "augment: 'maybe' is not true or false"),
    ("noise_step_size=lots", "noise_step_size: 'lots' is not a budget"),
    ("bogus=1", "unknown option(s) ['bogus']"),
    ("train_steps", "--opt expects key=value"),
])
def test_protect_options_are_typed_by_the_method_signature(tiny_tree, tmp_path, capsys, opt, message):
    rc = main(["protect", "--method", "minmaxmin", "--data", str(tiny_tree / "train"), "--out", str(tmp_path / "o"),
               "--opt", opt, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("poisonlab: error:") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_bench_set_overrides_are_checked(tmp_path, capsys):
    cfg = Path(__file__).resolve().parents[1] / "configs" / "smoke.json"
    assert main(["bench", "--config", str(cfg), "--set", "train.epochs=abc", "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poisonlab: error: epochs: 'abc' is not a whole number > 0") and len(err.splitlines()) == 1
