"""Who runs the grid: its cells as a dependency graph protect -> train -> report, handed to an executor.

    graph = plan(grid, cells)             # protect tasks (one per protected set) and train tasks (one per key)
    records = LocalExecutor().run(grid, graph, log)      # in this process, in config order (the default)
    records = RayExecutor(address=...).run(grid, graph, log)  # each task a Ray task with its resources

The report is the graph's last node: run_grid writes it in the driver once every train task is done.
Every task reads and writes the grid's on-disk cache (protected sets as `poisonlab protect` folders, one
JSON per finished cell, a checkpoint per running cell), so a grid stopped under one executor resumes
under the other: a task whose result is cached does nothing. On a cluster the cache must be a folder
every node sees (a shared file system).
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import PoisonlabError
from ..errors import LockedError
from ..runtime import set_threads
from .config import Cell

EXECUTORS = ("local", "ray")


@dataclass
class Task:
    """One node of the graph. kind: "protect" (key = the protection id) or "train" (key = the cell key)."""
    kind: str
    key: str
    cell: Cell
    needs: list = field(default_factory=list)  # keys of the protect tasks this task depends on


def plan(grid, cells) -> list:
    """The graph of the cells to train: one protect task per protected set not yet generated (a set shared by
    several cells is made once), then one train task per cell, depending on its protect task. In config
    order, so a local run trains the first experiments first and makes each protected set when first needed."""
    tasks, made = [], {}
    for c in cells:
        needs = []
        if c.protected:
            _, _, pid = grid.protection_id(c.method, c.budget)
            if pid not in made:
                made[pid] = Task("protect", pid, c)
                tasks.append(made[pid])
            needs = [pid]
        tasks.append(Task("train", grid.key(c), c, needs))
    return tasks


def run_task(grid, task: Task):
    """Do one task against the cache (both executors call this): protect makes the set (resuming its
    checkpoint, or nothing when the folder is complete); train returns the cell's record, or None when another
    run sharing the cache holds that set or cell (it is left to that run; a later run reports it)."""
    try:
        if task.kind == "protect":
            grid.protected(task.cell.method, task.cell.budget)
            return None
        return grid.cached(task.cell) or grid.run_cell(task.cell)
    except LockedError:
        return None


def _report(log, rec, head=None):
    if head:
        log(head)
    log(f"    last {rec['last_acc']:.2f}%  best {rec['best_acc']:.2f}% (epoch {rec['best_epoch']})  "
        f"{rec['train_seconds']:.0f}s training")


class LocalExecutor:
    """Today's behaviour: every task in this process, one after another, in the graph's order."""

    name = "local"

    def run(self, grid, tasks, log=print) -> list:
        trains = [t for t in tasks if t.kind == "train"]
        records = []
        for t in tasks:
            if t.kind == "train":
                log(f"[{len(records) + 1}/{len(trains)}] {t.cell.label()}")
            rec = run_task(grid, t)
            if rec is not None:
                records.append(rec)
                _report(log, rec)
            elif t.kind == "train":
                log("    skipped: another run sharing this cache is making it")
        return records


def _remote_task(where, threads, task, *after):
    """A task's body in a Ray worker: its own Grid on the shared cache, torch limited to its CPU share.
    after: the results of the tasks it depends on (Ray resolves them first; the cache holds what they made)."""
    torch.set_num_threads(max(1, int(threads)))
    set_threads()  # POISONLAB_THREADS, when the worker's environment sets it, wins (as in the CLI)
    grid_class, cfg, out, cache, device, source = where
    grid = grid_class(cfg, out, cache, device, progress=False, log=lambda *a: None)
    grid.source = source  # as the driver resolved it: a worker's working folder may differ
    return run_task(grid, task)


def _where(grid):
    """What a worker needs to rebuild the driver's Grid, with paths made absolute."""
    src = Path(grid.source)
    source = str(src.resolve()) if src.exists() else grid.source
    return type(grid), grid.cfg, grid.out.resolve(), grid.cache.resolve(), grid.device, source


class RayExecutor:
    """Each task a Ray task: protect tasks first, train tasks scheduled as soon as their protected set exists.

    address: a running cluster ("auto", "ray://head:10001", "host:6379"); None starts a local Ray with
    `num_cpus` CPUs (all of the machine's when None). cpus_per_cell: CPU threads of each train task (torch's
    intra-op threads are set to it); gpus_per_cell: the GPU fraction of a train task (e.g. 0.25: four small
    victims share one GPU; None = 0.25 when the cluster has GPUs, else 0); protect tasks get
    cpus_per_protect CPUs and one whole GPU when the cluster has any. max_retries: reruns of a task whose
    worker died (it resumes from its checkpoint)."""

    name = "ray"

    def __init__(self, address=None, num_cpus=None, cpus_per_cell=1, gpus_per_cell=None, cpus_per_protect=1,
                 max_retries=1):
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_cell, self.gpus_per_cell = float(cpus_per_cell), gpus_per_cell
        self.cpus_per_protect, self.max_retries = float(cpus_per_protect), int(max_retries)

    @staticmethod
    def _ray():
        try:
            import ray  # lazy: ray is an optional extra (pip install 'poisonlab[ray]')
        except ImportError:
            raise PoisonlabError("--executor ray needs Ray: pip install 'poisonlab[ray]'") from None
        return ray

    def _init(self, ray):
        if ray.is_initialized():
            return False
        kw = {"include_dashboard": False, "log_to_driver": False}
        if self.address:
            ray.init(address=self.address, **kw)
        else:
            ray.init(num_cpus=self.num_cpus, **kw)
        return True

    def run(self, grid, tasks, log=print) -> list:
        ray = self._ray()
        started = self._init(ray)
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            cell_gpu = self.gpus_per_cell if self.gpus_per_cell is not None else (0.25 if gpus else 0)
            fn = ray.remote(_remote_task)
            protect = fn.options(num_cpus=self.cpus_per_protect, num_gpus=1 if gpus else 0,
                                 max_retries=self.max_retries)
            train = fn.options(num_cpus=self.cpus_per_cell, num_gpus=cell_gpu, max_retries=self.max_retries)
            where = ray.put(_where(grid))
            refs, pending = {}, {}
            for t in tasks:
                if t.kind == "protect":
                    refs[t.key] = protect.remote(where, self.cpus_per_protect, t)
            for t in tasks:
                if t.kind == "train":
                    # The protect task's ref as an argument: Ray starts this task once that one is done.
                    pending[train.remote(where, self.cpus_per_cell, t, *[refs[k] for k in t.needs])] = t
            log(f"ray: {len(refs)} protect and {len(pending)} train tasks on {ray.cluster_resources().get('CPU', 0):g} "
                f"CPUs / {gpus:g} GPUs ({self.cpus_per_cell:g} CPU, {cell_gpu:g} GPU per cell)")
            records, total = [], len(pending)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                t = pending.pop(done[0])
                try:
                    rec = ray.get(done[0])
                except ray.exceptions.RayTaskError as e:  # e.g. a PoisonlabError: one line on the CLI, as locally
                    raise e.as_instanceof_cause() from None
                records.append(rec)
                _report(log, rec, f"[{len(records)}/{total}] {t.cell.label()}")
            return records
        finally:
            if started:
                ray.shutdown()


def make_executor(name="local", address=None, cpus_per_cell=1, gpus_per_cell=None):
    """The executor named on the command line (`poisonlab bench --executor ray --address auto`)."""
    if name == "local":
        if address:
            raise PoisonlabError("--address goes with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell)
    raise PoisonlabError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
