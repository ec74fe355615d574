"""bench/defenses.py's stage "availability" (no data, no training): the availability protections are made on demand
with `poisonlab bench`'s CPU-scale options (the ones docs/defenses.md declares), kept under made/, partial
protection mixes the full set in as the grid does, the old cells keep their keys, and the tables carry the rows."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from poisonlab.data import ImageSet
from poisonlab.registry import METHODS
from poisonlab.train import mix_partial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import defenses as entry  # noqa: E402
import defenses_bench as bench  # noqa: E402
import defenses_cells as cells  # noqa: E402
import defenses_report as report  # noqa: E402
import defenses_report_attacks as report_attacks  # noqa: E402
import defenses_settings as settings  # noqa: E402

EM = {"eps": "8/255", "seed": 0, "surrogate": "smallcnn", "width": 0.5, "pgd_steps": 5, "step_size": "2/255",
      "max_rounds": 6, "stop_acc": 0.95}
MINMAXMIN = {"eps": "8/255", "seed": 0, "surrogate": "smallcnn", "width": 0.5, "train_steps": 500,
             "lr_decay_every": 200, "noise_steps": 5, "noise_step_size": "16/1275", "eot": 2, "adv_eps": "4/255",
             "adv_steps": 3, "adv_step_size": "2/153"}


def _set(n=40, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % k,
                    [str(c) for c in range(k)])


def _bench(tmp_path, train=None):
    """What Bench.poison / partial read, without loading CIFAR-10."""
    b = SimpleNamespace(work=tmp_path, train=train or _set(), test=_set(12, seed=1), made_seconds={}, made_meta={},
                        probes={})
    b.sets = cells.LazySets(lambda key: bench.Bench.poison(b, key))
    b.partial = lambda key: bench.Bench.partial(b, key)
    b.save_made = lambda key, path, r: bench.Bench.save_made(b, key, path, r)
    b.read_made = lambda key, path: bench.Bench.read_made(b, key, path)
    return b


def test_stage_keys_leave_the_old_cells_alone():
    old = set(settings.ATTACKS) | set(settings.LECTURE) | {"clean"}
    assert not set(settings.PROTECTED) & old  # "noise" is random noise: "random" stays the random labels
    assert set(settings.AVAILABILITY_ORDER) == set(settings.PROTECTED)
    assert len(settings.AVAILABILITY_ORDER) == len(settings.PROTECTED)
    for key in settings.ATTACKS:
        assert settings.attack_spec(key) is settings.ATTACKS[key]
    for key in settings.LECTURE:
        assert settings.attack_spec(key) is settings.LECTURE[key]
    assert settings.attack_spec("clean") is None
    assert "availability" in settings.STAGES and "availability" not in settings.MAIN_STAGES
    assert settings.TABLE_ATTACKS[-len(settings.AVAILABILITY_ORDER):] == settings.AVAILABILITY_ORDER
    assert all(a in settings.DAMAGE_OF for a in settings.PROTECTED)  # read by their accuracy drop


def test_settings_are_the_benchs_cpu_scale_ones():
    spec = {a: settings.attack_spec(a) for a in settings.AVAILABILITY}
    assert spec["em"] == ("protect", "em", EM)
    assert spec["minmaxmin"] == ("protect", "minmaxmin", MINMAXMIN)
    assert spec["noise"] == ("protect", "random", {"eps": "8/255", "seed": 0})
    assert spec["lsp"] == ("protect", "lsp", {"eps": "8/255", "seed": 0})
    for m in ("cuda", "ops", "ar"):  # not L-inf: their own default budget, as in the bench's grid
        assert spec[m] == ("protect", m, {"seed": 0})
    assert settings.attack_spec("em-20pct") == ("protect", "em", EM, {"protected": 0.2, "seed": 0})
    assert settings.attack_spec("cuda-20pct") == ("protect", "cuda", {"seed": 0}, {"protected": 0.2, "seed": 0})
    for _, method, opts in spec.values():  # every option is one the method takes (construction only)
        METHODS.create(method, **opts)


def test_a_protection_is_made_once_and_read_back(tmp_path):
    b = _bench(tmp_path)
    data, poisoned = b.sets["noise"]
    assert len(poisoned) == len(data) and torch.equal(data.labels, b.train.labels)
    change = (data.images.int() - b.train.images.int()).abs()
    assert 0 < change.max() <= 8  # random noise within 8/255
    assert b.probes["noise"] is None and b.made_meta["noise"]["changed"] == len(poisoned)
    assert b.made_meta["noise"]["bound"]["eps_text"] == "8/255"
    (made,) = (tmp_path / "made").glob("noise-*.pt")
    again = _bench(tmp_path, b.train)  # a later process reads the set back instead of remaking it
    data2, poisoned2 = again.sets["noise"]
    assert torch.equal(data2.images, data.images) and torch.equal(poisoned2, poisoned)
    assert again.made_meta["noise"] == b.made_meta["noise"] and again.made_seconds == b.made_seconds


def test_partial_protection_mixes_the_full_set_in(tmp_path):
    b = _bench(tmp_path, _set(50))
    full, _ = b.sets["cuda"]
    data, poisoned = b.sets["cuda-20pct"]
    changed = (data.images != b.train.images).flatten(1).any(1)
    assert torch.equal(poisoned, torch.nonzero(changed).flatten()) and len(poisoned) == 10  # 20% of 50, all changed
    assert torch.equal(data.images[poisoned], full.images[poisoned])  # the protected images are the full set's
    assert torch.equal(data.images[~changed], b.train.images[~changed])
    same = mix_partial(full, b.train, 0.2, seed=0)  # as `poisonlab bench` draws its partial cells
    assert torch.equal(data.images, same.images) and torch.equal(data.labels, b.train.labels)
    assert b.made_meta["cuda-20pct"]["protected"] == 0.2 and b.made_seconds["cuda-20pct"] == b.made_seconds["cuda"]


def test_tables_carry_the_availability_rows():
    meta = {"bound": {"norm": "linf", "eps": 8 / 255, "levels": 8, "eps_text": "8/255"},
            "diagnostics": {"noise_train_acc": 74.0, "clean_train_acc": 30.0}}
    det = {"flagged": 750, "poisons": 5000, "found": 750, "precision": 100.0, "recall": 15.0, "seconds": 1.5}
    itlm = {"clean_acc": 30.0, "seconds": 9.0, "settings": {"itlm": {"alpha": 0.8, "rounds": 1}},
            "trimmed": {"flagged": 1000, "poisons": 5000, "found": 1000, "precision": 100.0, "recall": 20.0},
            "rounds": [{"train_size": 5000, "judge": {"clean_error": 0.0, "ok": True}}, {"train_size": 4000}]}
    res = {"clean/none": {"clean_acc": 59.0, "seconds": 1.0},
           "em/none": {"clean_acc": 29.0, "seconds": 5.0, "attack_seconds": 210.0, "changed": 5000, **meta},
           "em/detect-spectral": det, "em/itlm": itlm,
           "em/abl": {"clean_acc": 35.0, "seconds": 6.0, "before_unlearning": {"clean_acc": 34.0},
                      "isolation": {"flagged": 50, "precision": 100.0}, "unlearn_seconds": 0.5},
           "em-20pct/none": {"clean_acc": 58.5, "seconds": 5.0, "attack_seconds": 210.0, "changed": 1000,
                             "protected": 0.2, **meta},
           "em-20pct/dpa": {"clean_acc": 40.0, "seconds": 7.0, "k": 10, "base_acc": [30.0, 31.0],
                            "curve": [{"radius": 0, "certified_accuracy": 40.0}]}}
    text = report.tables(res)
    assert "| em | none | 29.0 | - | 29.0 | - | 59.0 | 5.0 | `em` eps 8/255, surrogate smallcnn, width 0.5, pgd_steps 5, " \
           "step_size 2/255, max_rounds 6, stop_acc 0.95 (configs/cpu.json's CPU-scale options); budget L-inf 8/255; " \
           "surrogate accuracy on its protected set 74.0% (on the clean images 30.0%); made in 210.0 s; every " \
           "training image protected (5000 changed): detection precision and ITLM's trimmed precision are trivially " \
           "100%, and ITLM and DPA have no clean part to keep; drop 30.0 points against clean data |" in text
    assert "| em | abl | 35.0 | - | 29.0 | - | 59.0 | 6.0 | isolated 50, precision 100.0%; before unlearning: acc " \
           "34.0, ASR -; unlearning 0.5 s; recovers 20% of EM's damage |" in text
    itlm_row = next(line for line in text.splitlines() if line.startswith("| em | itlm |"))
    assert "round-0 judge" not in itlm_row and "recovers 3% of EM's damage" in itlm_row  # no clean sample to check
    assert "| em-20pct | none | 58.5 |" in text and "20% of the training images protected (1000 changed), the rest " \
           "clean; drop 0.5 points" in text
    assert "recovers" not in next(line for line in text.splitlines() if line.startswith("| em-20pct | dpa |"))
    assert "| em | 100% (5000) | 29.0 (30.0) | 100.0 / 15.0 | - | 35.0 (20), 100.0 | 30.0 (3), 100.0 | - | " \
           "5.0 / 6.0 / 9.0 / - |" in text
    assert "| em-20pct | 20% (1000) | 58.5 (0.5) | - | - | - | - | 40.0 (-) | 5.0 / - / - / 7.0 |" in text
    assert report_attacks.recovered(50.0, 40.0, 60.0) == 50 and report_attacks.recovered(50.0, 59.5, 60.0) is None
    res["em/none"]["source"] = "`poisonlab bench`"  # a set made elsewhere (imported into made/) says by what
    assert "made in 210.0 s by `poisonlab bench`; every training image" in report.tables(res)


def test_unknown_protection_is_refused():
    with pytest.raises(SystemExit):
        entry.main(["--stages", "availability", "--availability", "em,nope"])
