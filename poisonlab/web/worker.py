"""One job, in its own process: `python -m poisonlab.web.worker JOBDIR`.

Loads the upload with the ordinary loaders, runs the ordinary `protect` pipeline (budget enforced and
checked again on the saved PNGs, checkpointed, resumed when a run is restarted), then makes the preview
images, the measured budget and the download zip. Progress comes from the pipeline's own progress bars,
read off stderr."""

import re
import sys
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np

from .. import PoisonlabError
from ..fileio import atomic_write
from .jobs import LOCKED, JobLock, read_job, update_job
from ..data import load_dataset
from ..protect import protect
from ..publishing import noise_path
from ..report.images import amplified, png_bytes, sample_indices
from ..report.protected import measure
from .methods import method_options
from ..fileio import read_json
from ..runtime import set_threads

# A tqdm bar ("desc:  45%|####  | 9/20 [...]") or a plain progress line ("desc:  45% 9/20 it | 3s").
BAR = re.compile(r"(?:(?P<desc>[^\r\n:|]*?):\s*)?(?P<pct>\d+)%(?:\|[^|]*\|)?\s*(?P<n>\d+)/(?P<total>\d+)")
PREVIEWS = 6


class ProgressSink:
    """A stand-in for sys.stderr: tqdm bars become job progress (throttled), everything goes to the log."""

    def __init__(self, job_dir: Path, log):
        self.dir, self.log, self.last = job_dir, log, 0.0

    def write(self, s):
        self.log.write(s)
        for seg in re.split(r"[\r\n]", s):
            m = BAR.search(seg)
            if m and (time.monotonic() - self.last > 0.5 or m["n"] == m["total"]):
                self.last = time.monotonic()
                n, total = int(m["n"]), int(m["total"])
                stage = (m["desc"] or "").strip() or "protecting"
                set_progress(self.dir, stage, n / total if total else None)
        return len(s)

    def flush(self):
        self.log.flush()

    def isatty(self):
        return False


def set_progress(d: Path, stage: str, fraction=None):
    update_job(d, progress={"stage": stage, "fraction": fraction, "updated": time.time()})


def run(d: Path):

    job = read_job(d)
    if job["state"] not in ("queued", "running"):
        return
    update_job(d, state="running", started=job.get("started") or time.time(), error=None)
    out = d / "out"
    set_progress(d, "loading images")
    ds = load_dataset(d / "input", "train", resize=job.get("resize") or None)
    if not (out / "manifest.json").is_file():
        set_progress(d, "protecting")
        opts = {**method_options(job["method"], job.get("preset", "default")), "eps": job.get("eps")}
        opts = {k: v for k, v in opts.items() if v is not None}
        # No source path: the manifest travels in the zip and must not reveal where this server keeps jobs.
        protect(job["method"], ds, out, resume=True, progress=True, **opts)
    set_progress(d, "preparing previews and downloads")
    manifest = read_json(out / "manifest.json")
    noise = np.load(noise_path(out), allow_pickle=False)
    preview = d / "preview"
    preview.mkdir(exist_ok=True)
    picks = sample_indices(ds.labels.numpy(), PREVIEWS)
    before = ds.images.numpy()
    for k, i in enumerate(picks):
        after = (before[i].astype(np.int16) + noise[i]).astype(np.uint8)  # noise = saved - original
        for kind, a in (("before", before[i]), ("after", after), ("noise", amplified(noise[i]))):
            with atomic_write(preview / f"{k}_{kind}.png") as f:
                f.write(png_bytes(a, min_side=128))
    with atomic_write(d / "protected.zip") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for p in sorted(out.rglob("*")):
                if p.is_file():
                    z.write(p, str(Path("protected") / p.relative_to(out)))
    budget = measure(noise, manifest.get("bound") or {})
    secrets_ = [p.name[len(out.name) + 1:] for p in sorted(d.glob(f"{out.name}.*")) if p.is_file()]
    update_job(d, state="done", finished=time.time(), previews=len(picks),
               preview_names=[ds.names[i] if ds.names else str(i) for i in picks],
               budget=budget, bound=manifest.get("bound"), images=manifest.get("num_images"),
               generation_seconds=manifest.get("generation_seconds"), secrets=secrets_,
               progress={"stage": "done", "fraction": 1.0, "updated": time.time()})


def main(argv=None):
    d = Path((argv or sys.argv[1:])[0])
    lock = JobLock(d)
    if not lock.acquire():
        return LOCKED
    set_threads()
    with open(d / "log.txt", "a", encoding="utf-8") as log:
        real = sys.stderr
        sys.stderr = ProgressSink(d, log)
        try:
            run(d)
        except PoisonlabError as e:
            msg = str(e).replace("pass --resize HxW", "set a size under 'Resize all to'")  # the page's words
            update_job(d, state="failed", error=msg, finished=time.time())
        except Exception as e:  # noqa: BLE001 -- any failure must reach the page, not only the log
            traceback.print_exc(file=log)
            update_job(d, state="failed", error=f"internal error: {type(e).__name__}: {e}", finished=time.time())
        finally:
            sys.stderr = real
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
