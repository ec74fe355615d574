"""bench/defenses.py's judge study (stage "judge"): the loss-recording hook, the augmented-view loss and the judge
table, on a tiny learnable set (a few seconds)."""

import sys
from pathlib import Path

import torch

from poisonlab.data import ImageSet
from poisonlab.defenses.probe import accuracy, per_sample_loss
from poisonlab.train import TrainConfig, train_victim

from conftest import make_set

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import defenses_measures as measures  # noqa: E402
import defenses_report_itlm as report_itlm  # noqa: E402

CFG = dict(model="smallcnn", width=0.125, batch_size=16, device="cpu", lr=0.05)


def test_loss_record_reads_every_sample_each_epoch_without_changing_training(tmp_path):
    data = make_set(48, classes=4, learnable=True, seed=3)
    cfg = TrainConfig(epochs=3, **CFG)
    rec = measures.LossRecord(data, 3)
    r = train_victim(data, None, cfg, progress=False, return_model=True, hooks=[rec], checkpoint=tmp_path / "a.pt")
    plain = train_victim(data, None, cfg, progress=False, return_model=True)
    for a, b in zip(r["model"].state_dict().values(), plain["model"].state_dict().values()):
        assert torch.equal(a, b)  # the hook only reads: the same model as without it
    assert not rec.eval.isnan().any() and not rec.train.isnan().any()  # every sample, every epoch
    assert torch.allclose(rec.eval[-1], per_sample_loss(r["model"], data))  # after the last epoch = the final model
    again = measures.LossRecord(data, 3)  # a rerun loads the finished checkpoint, losses included
    train_victim(data, None, cfg, progress=False, hooks=[again], checkpoint=tmp_path / "a.pt")
    assert torch.equal(again.eval, rec.eval) and torch.equal(again.train, rec.train)


def test_tta_loss_averages_the_image_its_mirror_and_crops():
    data = make_set(12, classes=4, learnable=True, seed=4)
    model = train_victim(data, None, TrainConfig(epochs=1, **CFG), progress=False, return_model=True)["model"]
    mirror = ImageSet(data.images.flip(3), data.labels, list(data.classes))
    two = (per_sample_loss(model, data) + per_sample_loss(model, mirror)) / 2
    assert torch.allclose(measures.tta_loss(model, data, crops=0), two)
    six = measures.tta_loss(model, data)
    assert six.shape == (12,) and torch.equal(six, measures.tta_loss(model, data))  # seeded: reproducible


def test_judge_table_names_the_best_epoch_and_every_ranking():
    stat = lambda auc, p: {"auc": auc, "precision": p, "poisons": 2000, "n": 10000}  # noqa: E731
    cell = {"clean_acc": 60.8, "val_acc": 61.3, "train_acc": 53.0, "seconds": 100.0, "flipped_fitted": 20.0,
            "flipped_true": 50.0, "clean_error": 39.0, "trimmed_clean_wrong": 97.0, "final": stat(0.85, 55.0),
            "per_epoch": [stat(0.7, 40.0), stat(0.86, 56.0), stat(0.85, 55.0)], "mean_all_epochs": stat(0.86, 57.3),
            "train_loss_last5": stat(0.85, 55.3), "tta": stat(0.86, 55.6)}
    lines = report_itlm.judge_table({"flip/judge-15": cell})
    row = [line for line in lines if line.startswith("| 15 |")]
    assert row == ["| 15 | 60.8 | 61.3 | 53.0 | 20.0 / 50.0 | 39.0 / 97.0 | 0.85 / 55.0 | 2: 0.86 / 56.0 | "
                   "0.86 / 57.3 | 0.85 / 55.3 | 0.86 / 55.6 | 100.0 |"]
    assert report_itlm.judge_table({}) == []


def test_epoch_loss_records_losses_and_validation_accuracy_each_epoch(tmp_path):
    data = make_set(48, classes=4, learnable=True, seed=3)
    val = make_set(16, classes=4, learnable=True, seed=5)
    cfg = TrainConfig(epochs=3, **CFG)
    rec = measures.EpochLoss(data, 3, [val, data])
    r = train_victim(data, None, cfg, progress=False, return_model=True, hooks=[rec], checkpoint=tmp_path / "e.pt")
    assert rec.losses.shape == (3, 48) and not rec.losses.isnan().any()
    assert torch.allclose(rec.losses[-1], per_sample_loss(r["model"], data))
    assert rec.val.shape == (3, 2) and rec.val[-1, 1].item() == accuracy(r["model"], data)
    again = measures.EpochLoss(data, 3, [val, data])  # a rerun reads the finished checkpoint's record
    train_victim(data, None, cfg, progress=False, hooks=[again], checkpoint=tmp_path / "e.pt")
    assert torch.equal(again.losses, rec.losses) and torch.equal(again.val, rec.val)


def test_checkpoint_table_picks_the_noisy_val_epoch_and_the_best_precision():
    rows = [{"epoch": 1, "noisy_val": 70.0, "clean_val": 80.0, "precision": 80.0},
            {"epoch": 2, "noisy_val": 75.0, "clean_val": 90.0, "precision": 84.0},
            {"epoch": 3, "noisy_val": 75.0, "clean_val": 91.0, "precision": 86.0},
            {"epoch": 4, "noisy_val": 74.0, "clean_val": 91.5, "precision": 85.0}]
    res = {"flip/checkpoint-selection": {"settings": {"schedules": ["cosine"]}, "retrained_on": 80, "flips_kept": 4,
                                         "cosine": {"test_acc": 90.0, "rows": rows}}}
    line = [q for q in report_itlm.checkpoint_table(res) if q.startswith("| cosine")][0]
    # final 85 / 74; the noisy val ties at epochs 2 and 3 and picks the earlier; best precision 86 at epoch 3
    assert line == "| cosine | 85.0 / 74.0 | 2, 84.0 | 86.0 (3) | 90.0 |"
    assert report_itlm.checkpoint_table({}) == []
