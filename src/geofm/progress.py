"""Progress display for terminals and for log files.

On a terminal the commands show tqdm bars. When stdout is not a terminal (``make demo > log``,
a batch job), a bar would write thousands of carriage-return frames into the file; there a
plain line is printed every ``every_s`` seconds (and at the end) instead. ``GEOFM_PROGRESS=plain``
asks for plain lines on a terminal too, ``GEOFM_PROGRESS=bar`` for bars everywhere.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

#: Seconds between two plain progress lines (``GEOFM_PROGRESS_EVERY`` overrides it).
DEFAULT_EVERY_S = 10.0


def interactive(stream: TextIO | None = None) -> bool:
    """Whether progress is drawn as bars: ``stream`` (stdout) is a terminal, unless ``GEOFM_PROGRESS`` says."""
    mode = os.environ.get("GEOFM_PROGRESS", "").lower()
    if mode in ("plain", "bar"):
        return mode == "bar"
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def every_seconds() -> float:
    """Seconds between plain progress lines (``GEOFM_PROGRESS_EVERY``, default 10)."""
    try:
        return float(os.environ.get("GEOFM_PROGRESS_EVERY", DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S


class PlainProgress:
    """The part of tqdm's interface the commands use, printed as plain lines.

    A line (``desc: 12/40 tasks (30%), 5.2 s``) is printed when ``every_s`` seconds passed since the
    last one, when the count reaches the total, and on :meth:`close` if anything changed since.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 every_s: float | None = None, stream: TextIO | None = None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.every_s = every_seconds() if every_s is None else every_s
        self.stream = stream or sys.stdout
        self.postfix = ""
        self._t0 = time.perf_counter()
        self._last_t = self._t0
        self._last_n: int | None = None

    def line(self) -> str:
        total = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.n}{total} {self.unit}{pct}, {time.perf_counter() - self._t0:.1f} s{post}"

    def _emit(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._last_t = time.perf_counter()
        self._last_n = self.n

    def refresh(self) -> None:
        done = self.total is not None and self.n >= self.total > 0
        if (done and self._last_n != self.n) or time.perf_counter() - self._last_t >= self.every_s:
            self._emit()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self._last_n != self.n:
            self._emit()


def done_of_total(bar) -> Callable[[int, int], None]:
    """The ``progress(done, total)`` callback of library functions, moving ``bar`` (of :func:`progress_bar`)."""

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return progress


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", **kwargs: Any):
    """A tqdm bar on a terminal, a :class:`PlainProgress` otherwise (see the module docstring)."""
    if interactive():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, **kwargs)
    return PlainProgress(total=total, desc=desc, unit=unit, initial=kwargs.get("initial", 0))
