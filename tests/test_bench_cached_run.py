"""bench/modelbased.py cached_run: the one way the bench scripts share a cached run between invocations."""

import importlib.util
import sys
import threading
from pathlib import Path

from poisonlab.fileio import exclusive_lock

ROOT = Path(__file__).resolve().parents[1]


def _modelbased():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("modelbased", ROOT / "bench" / "modelbased.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_made_once_then_read_and_skipped_while_locked(tmp_path):
    mod = _modelbased()
    path, calls = tmp_path / "victims" / "run.json", []

    def make():
        calls.append(1)
        path.with_suffix(".pt").write_bytes(b"checkpoint")
        return {"last_acc": 12.5}

    assert mod.cached_run(path, make) == {"last_acc": 12.5}
    assert mod.cached_run(path, make) == {"last_acc": 12.5} and len(calls) == 1
    assert not path.with_suffix(".pt").exists()  # the checkpoint goes once the result is saved
    other = tmp_path / "victims" / "other.json"
    with exclusive_lock(other, "victim run"):  # held by "another run": this one moves on
        # the holding thread may nest the lock: ask from another thread, as a second run would
        got = []
        t = threading.Thread(target=lambda: got.append(mod.cached_run(other, make)))
        t.start()
        t.join()
    assert got == [None] and not other.exists() and len(calls) == 1
