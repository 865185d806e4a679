"""Progress and log output of long runs: a tqdm bar on a terminal or in a notebook, plain
periodic log lines everywhere else.

dmdjax reports through the standard library's :mod:`logging`, on the logger ``"dmdjax"`` (and
its children), never with ``print``: a script shows the messages with
``logging.basicConfig(level=logging.INFO)`` and silences them by raising the level; the command
line shows INFO (``--verbose``: DEBUG, ``--quiet``: warnings and errors only).

Long loops (DMD intervals, sampler intervals, training steps, fits) take ``progress=True`` and
wrap themselves in :func:`track` or :class:`Progress`: where standard error is a terminal, or in
a Jupyter kernel, that is a tqdm bar; otherwise (a log file, a batch job, CI) one INFO line
``desc: i/total unit (x %), t s elapsed`` at most every :data:`LOG_INTERVAL` seconds and at the
end — never a carriage return.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator

logger = logging.getLogger("dmdjax")

#: Seconds between two progress lines when no bar is shown.
LOG_INTERVAL = 30.0


def interactive() -> bool:
    """True where a progress bar can redraw itself: standard error is a terminal, or a Jupyter kernel."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or replaced stream
        pass
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ipython = shell.get_ipython()
    except AttributeError:
        return False
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


class Progress:
    """Progress of ``total`` steps named ``desc``: ``update(n)`` after each, ``close()`` at the end
    (or use it as a context manager). A tqdm bar where :func:`interactive`, log lines otherwise
    (module docstring); ``enabled=False`` shows nothing."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, enabled: bool = True,
                 interval: float | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.count, self.info = 0, ""
        self.interval = LOG_INTERVAL if interval is None else float(interval)
        self._start = self._last = time.perf_counter()
        self._bar = None
        self._enabled = enabled
        if enabled and interactive():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit)

    def update(self, n: int = 1, **info) -> None:
        """``n`` more steps done; ``info`` (name=value) is shown beside the count."""
        self.count += n
        if info:
            self.info = ", ".join(f"{key}={_short(value)}" for key, value in info.items())
        if self._bar is not None:
            if info:
                self._bar.set_postfix(info, refresh=False)
            self._bar.update(n)
        elif self._enabled and time.perf_counter() - self._last >= self.interval:
            self._log()

    def close(self) -> None:
        """End the bar, or log the final line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._enabled:
            self._log()
            self._enabled = False

    def _log(self) -> None:
        now = time.perf_counter()
        self._last = now
        done = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        share = f" ({100.0 * self.count / self.total:.0f} %)" if self.total else ""
        extra = f", {self.info}" if self.info else ""
        logger.info(f"{self.desc}: {done} {self.unit}{share}, {now - self._start:.0f} s elapsed{extra}")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable, desc: str, unit: str = "it", *, total: int | None = None,
          enabled: bool = True) -> Iterator:
    """Iterate over ``iterable`` with a :class:`Progress` (``total`` defaults to its ``len``)."""
    if not enabled:
        yield from iterable
        return
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, unit) as progress:
        for item in iterable:
            yield item
            progress.update()


def _short(value) -> str:
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError):
        return str(value)
