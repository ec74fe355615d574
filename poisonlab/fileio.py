"""Atomic file writes, private (0600) files for secrets, and an exclusive lock on an output path.

Every file is written to a temporary file beside its target and renamed over it, so a reader never sees
half a file. Secrets (noise arrays, checkpoints holding noise, keys) are created 0600 and stay so: there is
no moment in which they are readable by others.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

from . import PoisonlabError
from .errors import LockedError


@contextlib.contextmanager
def atomic_write(path, mode="wb", *, private=False, replace=True):
    """Write path atomically. private=True keeps the file 0600 (mkstemp creates it so, and it is never
    widened). replace=False refuses to replace an existing file (the check and the rename are one link())."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    if not private:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # published outputs are readable like any file the user writes
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: never clobbers it, even in a race
            except FileExistsError:
                raise PoisonlabError(f"{path} exists; refusing to replace it") from None
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def private_dir(path) -> Path:
    """Create (or tighten) a folder that only its owner can read: work folders hold noise and keys."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def load_state(path, what="checkpoint") -> dict:
    """torch.load a dict with weights_only=True (tensors, containers, numbers, strings: nothing a file can
    use to run code); any failure is a one-line PoisonlabError."""
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or hostile file: the user's to remove, not a crash
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PoisonlabError(f"cannot read {what} {path} (only plain tensors and containers are accepted): "
                             f"{first}") from None
    if not isinstance(state, dict):
        raise PoisonlabError(f"{what} {path} does not hold a dict")
    return state


def save_state(path, state: dict, private=True):
    """torch.save atomically; private (0600 from creation) by default: checkpoints may hold noise."""
    import torch
    with atomic_write(path, private=private) as f:
        torch.save(state, f)


def write_json(path, obj):
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def lock_path_for(target) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


_HELD = {}  # lock path -> [(pid, thread id), depth]: the holder may nest (protect -> publish -> staged_dir)
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def exclusive_lock(target, what="output"):
    """Hold an exclusive lock on a file beside target (.TARGET.lock) for the block (fcntl.flock).

    A second process, or another thread of this one, asking for the same target fails at once with a
    clear message instead of interleaving its writes; the thread holding it may take it again (nested).
    The lock file is removed on release; a process that opened it just before (and so locked a removed
    inode) notices and retries on the new file.
    """
    path = Path(os.path.abspath(lock_path_for(Path(target).expanduser())))
    me = (os.getpid(), threading.get_ident())  # a forked child inherits _HELD but not the lock: pid tells
    with _HELD_GUARD:
        held = _HELD.get(path)
        if held is not None and held[0][0] != me[0]:
            del _HELD[path]  # the parent's entry; the flock below decides
            held = None
        if held is not None and held[0] == me:
            held[1] += 1
            nested = True
        elif held is not None:
            raise LockedError(f"another poisonlab run (pid {os.getpid()}) is writing {what} {target} "
                                 f"(lock {path}); wait for it to finish or choose another path")
        else:
            nested = False
            _HELD[path] = [me, 1]
    if nested:
        try:
            yield path
        finally:
            with _HELD_GUARD:
                _HELD[path][1] -= 1
        return
    try:
        fd = _flock(path, target, what)
    except BaseException:
        with _HELD_GUARD:
            del _HELD[path]
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        with _HELD_GUARD:
            del _HELD[path]


def _flock(path: Path, target, what) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise LockedError(f"another poisonlab run{_read_holder(path)} is writing {what} {target} "
                                 f"(lock {path}); wait for it to finish or choose another path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file between our open and lock: lock the new one


def _read_holder(path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(Path(path).read_text().split()[0])})"
    return ""


def interrupt_on_sigterm():
    """Make `kill` (SIGTERM) stop a run as Ctrl-C does, so that its cleanup runs: the partial output is
    removed, resumable progress is kept and the lock released. Only the main thread can set a handler."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
