"""Wall time of tests/test_executors.py's 4-cell grid under the local executor and twice on one local Ray
(the first Ray grid pays for starting workers), as quoted in docs/scale.md.

    POISONLAB_THREADS=1 nice -n 5 .venv/bin/python bench/executor_timing.py
"""

import sys
import tempfile
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_bench import tiny_config  # noqa: E402  (the test's grid, from the tests folder)

from poisonlab.bench import run_grid  # noqa: E402
from poisonlab.bench.executors import RayExecutor  # noqa: E402


def main():
    tmp = Path(tempfile.mkdtemp())
    cfg = tiny_config(tmp)
    quiet = dict(progress=False, log=lambda *a: None)
    t = time.perf_counter()
    run_grid(cfg, out=tmp / "local", **quiet)
    print(f"local executor: {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - t:.0f} s", flush=True)
    for run in ("first", "second"):
        t = time.perf_counter()
        run_grid(cfg, out=tmp / f"ray-{run}", executor=RayExecutor(), **quiet)
        print(f"ray, {run} grid: {time.perf_counter() - t:.0f} s", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
