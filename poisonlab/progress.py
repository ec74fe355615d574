"""Progress: a bar on a terminal, plain lines in a log.

    with progress(total, "em rounds", enabled=True) as bar:
        for ...: bar.update(1)

On a terminal (stderr is a TTY) this is a tqdm bar. Otherwise (a log file, a pipe, CI) carriage-return
bars would fill the log with garbage, so a line is printed when a stage starts, at every `every` percent
and when it ends. update() costs one integer comparison between lines: nothing on the hot path.
"""

import sys
import time


def progress(total, desc="", *, initial=0, enabled=True, unit="it", every=10, stream=None):
    """A tqdm bar on a TTY, a PlainProgress elsewhere, or a no-op when enabled is False."""
    stream = sys.stderr if stream is None else stream
    if enabled and _isatty(stream):
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=stream)
    return PlainProgress(total, desc, initial=initial, enabled=enabled, unit=unit, every=every, stream=stream)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class PlainProgress:
    """tqdm's update / set_postfix / close interface, printing whole lines."""

    def __init__(self, total, desc="", *, initial=0, enabled=True, unit="it", every=10, stream=None):
        self.total, self.desc, self.n, self.unit = int(total or 0), desc or "progress", int(initial), unit
        self.enabled, self.stream = enabled, stream if stream is not None else sys.stderr
        self.step = max(1, self.total * every // 100) if self.total else 0
        self.next = (self.n // self.step + 1) * self.step if self.step else float("inf")
        self.postfix, self.start, self.closed = "", time.monotonic(), False
        self._line("started" if self.n == 0 else "resumed")

    def update(self, k=1):
        self.n += k
        if self.n >= self.next:
            self.next = (self.n // self.step + 1) * self.step
            if self.n < self.total:
                self._line()

    def set_postfix(self, **kw):
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def set_description(self, desc):
        self.desc = desc

    def close(self):
        if not self.closed:
            self.closed = True
            self._line("done")

    def _line(self, what=None):
        if not self.enabled:
            return
        pct = f"{100 * self.n // self.total:3d}%" if self.total else ""
        parts = [f"{self.desc}: {pct} {self.n}/{self.total} {self.unit}".rstrip()]
        if what:
            parts.append(what)
        parts.append(f"{time.monotonic() - self.start:.0f}s")
        if self.postfix:
            parts.append(self.postfix)
        print(" | ".join(parts), file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None and not self.closed:
            self.closed = True
            self._line("stopped")
        self.close()
        return False
