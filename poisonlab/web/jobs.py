"""Jobs on disk, so that they survive a page reload and a server restart.

ROOT/jobs/<id>/job.json      state (queued | running | done | failed | cancelled), method, settings, progress, results
ROOT/jobs/<id>/input/train/  the upload as an ImageFolder tree (class folders, or one folder "images")
ROOT/jobs/<id>/out/          the `protect` output (published part)
ROOT/jobs/<id>/out.noise.npy the private noise (and out.cuda-key for CUDA), beside out/, never inside
ROOT/jobs/<id>/protected.zip the download; preview/ holds before/after/noise PNGs

One runner thread runs queued jobs one at a time, each in a worker process (`python -m poisonlab.web.worker`),
so a crash or a kill never takes the server down. A job left 'running' by a stopped server is run again
and `protect` resumes it from its checkpoint. The worker holds an flock on the job while it runs, so a
worker that outlived its server is waited for, not duplicated.
"""

import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import PoisonlabError
from ..fileio import write_json

JOB_ID = re.compile(r"[A-Za-z0-9_-]{16}")
ACTIVE = ("queued", "running")
LOCKED = 75  # worker exit code: another worker holds the job


def new_id() -> str:
    return secrets.token_urlsafe(12)  # 16 characters


class JobStore:
    def __init__(self, root):
        self.root = Path(root).expanduser()
        self.jobs = self.root / "jobs"
        self.jobs.mkdir(parents=True, exist_ok=True)
        for p in (self.root, self.jobs):
            os.chmod(p, 0o700)  # uploads, noise and keys are private to the user running the server
        for p in self.jobs.glob(".*.upload"):  # uploads cut off by an earlier server's end
            shutil.rmtree(p, ignore_errors=True)

    def dir(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            raise KeyError(job_id)
        d = self.jobs / job_id
        if not (d / "job.json").is_file():
            raise KeyError(job_id)
        return d

    def read(self, job_id: str) -> dict:
        return read_job(self.dir(job_id))

    def all(self) -> list:
        out = []
        for d in self.jobs.iterdir():
            if JOB_ID.fullmatch(d.name) and (d / "job.json").is_file():
                try:
                    out.append(read_job(d))
                except (OSError, ValueError):
                    continue
        return sorted(out, key=lambda j: j.get("created", 0))

    def create(self, job_id: str, fields: dict) -> dict:
        d = self.jobs / job_id
        job = {"id": job_id, "created": time.time(), "state": "queued", "progress": {"stage": "waiting to start"},
               **fields}
        write_json(d / "job.json", job)
        return job

    def delete(self, job_id: str):
        d = self.dir(job_id)
        if read_job(d)["state"] in ACTIVE:
            raise PoisonlabError("the job is still running; wait for it to finish")
        shutil.rmtree(d)


def read_job(d: Path) -> dict:
    with open(d / "job.json") as f:
        return json.load(f)


def update_job(d: Path, **fields) -> dict:
    """Read-modify-write of job.json (only the worker writes while a job runs; the runner before and after)."""
    job = read_job(d)
    job.update(fields)
    write_json(d / "job.json", job)
    return job


class JobLock:
    """Exclusive flock on ROOT/jobs/<id>/lock, held by the worker for the whole run."""

    def __init__(self, d: Path):
        self.path = Path(d) / "lock"
        self.fd = None

    def acquire(self, blocking=False) -> bool:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Runner(threading.Thread):
    """Runs queued jobs, oldest first, one at a time, each in its own worker process."""

    def __init__(self, store: JobStore, env=None, poll=0.5):
        super().__init__(name="poisonlab-jobs", daemon=True)
        self.store, self.env, self.poll = store, env, poll
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # picking and starting a job vs cancelling one
        self.proc = self.current = None
        self.cancelled = set()

    def next_job(self):
        for job in self.store.all():
            if job["state"] in ACTIVE:
                return job
        return None

    def run(self):
        while not self.stopping.is_set():
            with self.lock:
                job = self.next_job()
                d = self.store.jobs / job["id"] if job else None
                started = d is not None and self.start_worker(d)
            if not started:
                self.wake.wait(self.poll)
                self.wake.clear()
                continue
            self.finish_worker(d)

    def start_worker(self, d: Path) -> bool:
        """Start a worker on d unless a worker of an earlier server still holds the job (then wait for it)."""
        probe = JobLock(d)
        if not probe.acquire():
            return False
        probe.release()
        env = {**os.environ, **(self.env or {})}
        with open(d / "worker.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "poisonlab.web.worker", str(d)], stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.current = d.name
        return True

    def finish_worker(self, d: Path):
        rc = self.proc.wait()
        with self.lock:
            self.proc = self.current = None
            cancelled = d.name in self.cancelled
            self.cancelled.discard(d.name)
        if cancelled:
            update_job(d, state="cancelled", error=None, finished=time.time(), progress={"stage": "cancelled"})
            return
        if self.stopping.is_set() or rc == LOCKED:
            return  # the job stays 'running' and resumes when the server starts again
        job = read_job(d)
        if job["state"] in ACTIVE:  # the worker died without saying why
            update_job(d, state="failed", error=f"the protection process stopped unexpectedly (exit code {rc}); "
                                                "see worker.log in the job folder")

    def cancel(self, job_id: str) -> bool:
        """Stop a queued or running job for good; False when another process runs it."""
        d = self.store.dir(job_id)
        with self.lock:
            if self.current == job_id and self.proc is not None:
                self.cancelled.add(job_id)
                self.proc.terminate()
                return True
            if read_job(d)["state"] not in ACTIVE:
                return True
            probe = JobLock(d)
            if not probe.acquire():  # a worker of an earlier server runs it
                return False
            try:
                update_job(d, state="cancelled", finished=time.time(), progress={"stage": "cancelled"})
            finally:
                probe.release()
            return True

    def stop(self, timeout=10.0):
        self.stopping.set()
        self.wake.set()
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
        self.join(timeout)
