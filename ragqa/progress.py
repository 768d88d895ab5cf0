"""Progress on long work (embedding a long file, OCR of a scan, a batch of files), on stderr.

A terminal gets a tqdm bar; a stderr that is a log (a file, CI, a pipe) gets a plain line every
``LOG_PROGRESS_EVERY_S`` seconds with done/total and the time left, so a file that takes hours
still shows it is moving; ``enabled=False`` shows nothing. Library code asks for a bar here and
never writes to stderr itself.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

LOG_PROGRESS_EVERY_S = 10.0


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


class LineProgress:
    """Progress for a stderr that is not a terminal: a plain line every ``LOG_PROGRESS_EVERY_S`` seconds."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.started = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= LOG_PROGRESS_EVERY_S and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate else 0
            sys.stderr.write(f"{self.desc}: {self.done}/{self.total} {self.unit}s "
                             f"({100 * self.done // max(self.total, 1)}%, about {left:.0f}s left)\n")
            sys.stderr.flush()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str, *, enabled: bool = True) -> Any:
    """tqdm on a terminal; timed plain lines when stderr is a log; nothing when not ``enabled``.
    A context manager with ``update(n)``."""
    from tqdm import tqdm

    if enabled and stderr_is_tty():
        return tqdm(total=total, desc=desc, unit=unit)
    if enabled:
        return LineProgress(total, desc, unit)
    return tqdm(total=total, disable=True)


def file_bar(items: Iterable[Any], desc: str, *, enabled: bool) -> Any:
    """A bar over files (an iterable wrapper with ``set_postfix_str``), shown only when ``enabled``."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="file", disable=not enabled)


class PageProgress:
    """OCR's per-page progress as a bar, opened at the first page (most files need no OCR)."""

    def __init__(self, name: str, show: bool = True, also: Callable[[int, int], None] | None = None) -> None:
        self.name, self.show, self.also, self.bar = name, show, also, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(total, f"OCR {self.name[:30]}", "page", enabled=self.show and total > 1).__enter__()
        self.bar.update(1)
        if self.also is not None:
            self.also(done, total)

    def __enter__(self) -> "PageProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
