"""Progress bars for long commands (``backfill``, ``reindex``, ``retry --failed``, ``deploy --requirements``).

A bar shows on stderr only when it is a terminal. While it shows, log
records below WARNING are held back (one INFO line per job would bury it)
and the others are written above the bar (tqdm.write), so it stays one line.
Off a terminal nothing changes: logs go where they always go.

Example::

    with progress_bar(unit=" objects", desc="backfill") as advance:
        for item in items:
            advance(1)
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


class _Quiet(logging.Filter):
    """Drops records below WARNING: what a bar would be broken by, and nobody needs mid-command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def showing() -> bool:
    """Whether a bar would show (stderr is a terminal)."""
    return sys.stderr.isatty()


@contextlib.contextmanager
def _shown(total: int | None, unit: str, desc: str | None, bar_format: str | None = None) -> Iterator[Any]:
    """A tqdm bar on stderr, with the logs below WARNING held back and the rest written above it."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    quiet = _Quiet()
    with logging_redirect_tqdm(), tqdm(total=total, unit=unit, desc=desc, file=sys.stderr,
                                       bar_format=bar_format) as bar:
        handlers = list(logging.getLogger().handlers)  # tqdm's own, as logging_redirect_tqdm set them
        for handler in handlers:
            handler.addFilter(quiet)
        try:
            yield bar
        finally:
            for handler in handlers:
                handler.removeFilter(quiet)


@contextlib.contextmanager
def progress_bar(total: int | None = None, *, unit: str = " items", desc: str | None = None,
                 ) -> Iterator[Callable[[int], None]]:
    """A bar (``advance(n)`` moves it) while the block runs, on a terminal; elsewhere ``advance`` does nothing."""
    if not showing():
        yield lambda n: None
        return
    with _shown(total, unit, desc) as bar:

        def advance(n: int) -> None:
            bar.update(n)

        yield advance


@contextlib.contextmanager
def working(desc: str) -> Iterator[None]:
    """An indicator with the time spent, for a long step of unknown length (pip installing requirements)."""
    if not showing():
        yield
        return
    with _shown(None, "", desc, bar_format="{desc}: {elapsed}") as bar:
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                bar.refresh()

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


__all__ = ["progress_bar", "showing", "working"]
