"""bench/defenses.py's stage "lecture" (no data, no training): the lecture's other attacks are made on demand,
the old cells keep their keys, every attack is scored by its own probe, and the tables carry the new rows."""

import sys
from pathlib import Path

import torch

from poisonlab.attacks import create_attack
from poisonlab.data import ImageSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import defenses_cells as cells  # noqa: E402
import defenses_measures as measures  # noqa: E402
import defenses_report as report  # noqa: E402
import defenses_settings as settings  # noqa: E402


def _set(n=40, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % k,
                    [str(c) for c in range(k)])


def test_lecture_attacks_are_lazy_and_the_old_keys_stay():
    assert not set(settings.LECTURE) & set(settings.ATTACKS)  # Bench() makes ATTACKS only: other runs never pay
    assert settings.attack_spec("badnets") is settings.ATTACKS["badnets"] and settings.attack_spec("clean") is None
    assert settings.attack_spec("pgan") == settings.LECTURE["pgan"]
    assert set(settings.LECTURE_ORDER) <= set(settings.LECTURE) | set(settings.ATTACKS)
    assert "lecture" in settings.STAGES and "lecture" not in settings.MAIN_STAGES
    made = []
    sets = cells.LazySets(lambda key: made.append(key) or key.upper())
    assert sets["pgan"] == "PGAN" and sets["pgan"] == "PGAN" and made == ["pgan"]


def test_success_probe_is_the_attacks_own_test():
    train, test = _set(), _set(12, seed=1)
    atk = create_attack("blended", target_class=2, poison_rate=0.25, trigger_seed=3, seed=0)
    probe = measures.success_probe(atk, atk(train), test)
    keep = test.labels != 2
    assert len(probe) == int(keep.sum()) and (probe.labels == 2).all()
    assert torch.equal(probe.images, atk.triggered_test(test.images, test.labels)[0])
    ids, adv = [5, 1], torch.tensor([3, 0])
    tgt = create_attack("random-poison", target_images=test.images[ids], adversarial_labels=adv, target_ids=ids,
                        num_poisons=2, seed=0)
    probe = measures.success_probe(tgt, tgt(train), test)
    assert torch.equal(probe.images, test.images[ids]) and probe.labels.tolist() == [3, 0]
    flip = create_attack("label-flip", fraction=0.2, seed=0)
    assert measures.success_probe(flip, flip(train), test) is None  # judged by the accuracy drop


def test_tables_carry_the_lecture_rows():
    det = {"flagged": 60, "poisons": 10, "found": 4, "precision": 6.7, "recall": 40.0, "seconds": 1.5}
    res = {"clean/none": {"clean_acc": 59.0, "seconds": 1.0},
           "poison-frogs/none": {"clean_acc": 58.5, "asr": 10.0, "seconds": 2.0, "attack_seconds": 17.2},
           "poison-frogs/detect-spectral": det, "poison-frogs/clean-model": {"clean_acc": 59.0, "asr": 0.0},
           "p-tampering/none": {"clean_acc": 55.0, "seconds": 2.0, "attack_seconds": 0.1},
           "p-tampering/abl": {"clean_acc": 50.0, "seconds": 3.0, "before_unlearning": {"clean_acc": 51.0},
                               "isolation": {"flagged": 50, "precision": 20.0}, "unlearn_seconds": 0.5},
           "clean-label/none": {"clean_acc": 58.0, "asr": 5.0, "seconds": 2.0, "attack_seconds": 1.5},
           "clean-label/abl": {"clean_acc": 50.0, "asr": 1.0, "seconds": 9.0, "before_unlearning": {"clean_acc": 51.0},
                               "isolation": {"flagged": 50, "precision": 20.0}}}
    text = report.tables(res)
    assert "| poison-frogs | none | 58.5 | 10.0 | 58.5 | 10.0 | 59.0 | 2.0 | `poison-frogs` (defaults); surrogate: " \
           "the clean victim; made in 17.2 s; ASR = share of its 10 test targets classified as their adversarial " \
           "class; the clean-data model on the same probe: ASR 0.0 |" in text
    assert "| poison-frogs | spectral | 60 | 10 | 4 | 6.7 | 0.2 | 40.0 | 1.5 |" in text
    assert "| p-tampering | none | 55.0 | - | 55.0 | - | 59.0 | 2.0 | `p-tampering` p 0.1; surrogate: the clean " \
           "victim; made in 0.1 s; drop 4.0 points against clean data |" in text
    assert "| p-tampering | abl | 50.0 | - | 55.0 | - | 59.0 | 3.0 | isolated 50, precision 20.0%; before " \
           "unlearning: acc 51.0, ASR -; unlearning 0.5 s; recovers -125% of p-tampering's damage |" in text
    assert "ASR -; unlearning 0.5 s" in text and "seconds count the training twice" in text  # cells before the fix
