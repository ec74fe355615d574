"""The ownership bench's helpers (bench/ownership_*.py) for victims of another length (no data, no training): cache
names, the refusal of a cached model trained for another number of epochs, training accuracy on a subset, the
harmlessness interval; and the entry point bench/ownership.py keeps its command line."""

import sys
from pathlib import Path

import pytest
import torch

from poisonlab.data import ImageSet
from poisonlab.fileio import write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import ownership  # noqa: E402
from ownership_cache import Bench  # noqa: E402
from ownership_long import train_fit  # noqa: E402
from ownership_settings import LONG9, VICTIM  # noqa: E402
from ownership_summary import harmlessness  # noqa: E402


def test_clean_names_keep_the_8_epoch_cache_and_name_other_lengths():
    assert Bench.clean_name(3) == "clean-s3"  # the cached 8-epoch clean models keep their names
    assert Bench.clean_name(3, 30) == "clean-e30-s3"
    assert not Bench.clean_name(3, 30).startswith("clean-s")  # never in the older null (clean-s* glob)


def test_long_copies_use_their_length_and_others_keep_8(tmp_path):
    b = Bench.__new__(Bench)  # no data needed
    b.long_epochs = 30
    assert [b.epochs(c) for c in LONG9] == [30, 30, 30]
    assert b.epochs("k40h") == VICTIM["epochs"] == 8


def test_a_cached_model_of_another_length_is_refused(tmp_path):
    b = Bench.__new__(Bench)
    b.cache = tmp_path
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "k40n-s0.pt").write_bytes(b"")
    write_json(tmp_path / "models" / "k40n-s0.json", {"config": {"epochs": 8}, "last_acc": 40.0})
    with pytest.raises(SystemExit, match="trained 8 epochs, not 30"):
        b.model("k40n-s0", None, seed=0, epochs=30)


def test_train_fit_counts_all_images_and_the_subset():
    class First(torch.nn.Module):  # predicts class 0 for every image
        def forward(self, x):
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], 1)

    data = ImageSet(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1, 1]), ["a", "b"])
    assert train_fit(First(), data, torch.tensor([True, False, True, True])) == (50.0, pytest.approx(100 / 3))


def test_harmlessness_interval_over_every_draw():
    out = {"draws": {"a": {"acc_diff": [1.0, -1.0]}, "b": {"acc_diff": [0.5, 0.5]}}}
    harmlessness(out)
    h = out["harmlessness"]
    assert h["pairs"] == 4 and h["lower"] == 1 and h["mean"] == pytest.approx(0.25)
    lo, hi = h["interval90"]
    assert lo < 0.25 < hi and hi - 0.25 == pytest.approx(0.25 - lo)


def test_the_entry_point_keeps_its_command_line(capsys):
    with pytest.raises(SystemExit) as stop:  # --help stops before any data is loaded
        ownership.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for option in ("--stage", "--cache", "--long-epochs", "--long-draws", "--long-control", "--robust-copies",
                   "--null-keys", "--null-sets", "--no-twins"):
        assert option in out
    assert "screen80" in out and "k40n" in out and "pub40k" in out  # on-demand stages and the draws' stages
