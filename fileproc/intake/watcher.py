"""Watch the local backend's bucket folders and report each complete file once.

With the embedded default, bucket ``B``'s object ``K`` is the file
``<root>/B/K``. fileproc's own writes land atomically (a rename), but people
also drop files in by hand: ``cp``, editors, ``rsync`` (hidden temp file, then
a rename), downloads that grow for minutes. A half-written file must never be
reported, so a file is reported only when

1. something says it may be complete: it was closed after writing
   (``IN_CLOSE_WRITE``), renamed or moved into place, or appeared inside a
   directory that was moved or copied in; and
2. nobody we know of still has it open; and
3. its (size, mtime, inode) stayed the same for ``settle_seconds``, because
   copy tools may close and reopen, and a writer may pause. With
   ``settle_seconds = 0`` (files arrive whole) a file closed by its writer or
   renamed into place is reported at once, without waiting for a second look.

Many events for one file within the settle window become one report; a file
whose content changes after it was reported is reported again.

Example::

    def on_object(bucket: str, key: str) -> None:
        print("new or changed:", bucket, key)

    with FolderWatcher(data_dir / "buckets", on_object) as watcher:
        for bucket, key in watcher.scan():  # what was there before we started
            on_object(bucket, key)
        ...
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from types import TracebackType
from typing import Self

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

try:
    from watchdog.observers.inotify import InotifyObserver
except ImportError:  # not Linux: only polling is available
    InotifyObserver = None  # type: ignore[assignment,misc]

from fileproc.errors import FileprocError
from fileproc.events import ObjectEvent
from fileproc.intake import Submit
from fileproc.objects import event_for, name_problem
from fileproc.storage import Storage

REMOVED = "s3:ObjectRemoved:Delete"

log = logging.getLogger(__name__)

TEMP_SUFFIXES: tuple[str, ...] = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")
"""Names that belong to a write still in progress (downloads, editors)."""

_JOIN_SECONDS = 5.0
# A missed close event (inotify queue overflow, two opens that watchdog folds
# into one) would otherwise hold a file back forever. Past this long without
# any change we report it anyway; if it changes later it is reported again.
_OPEN_GRACE_SECONDS = 60.0
# Remembering what we reported only saves duplicate calls (dispatch dedupes by
# etag anyway), so bound the memory instead of keeping one entry per file forever.
_REPORTED_MEMORY = 100_000
# With settle_seconds = 0, how long after a file appeared it is looked at again: its
# writer's open (which holds it back) is reported by inotify right after its creation.
_SECOND_LOOK_SECONDS = 0.005

CATCH_UP_BATCH = 500
"""Files already there at start submitted together (one transaction each batch)."""

Signature = tuple[int, int, int]
"""(size, mtime_ns, inode): a file whose signature is unchanged is unchanged."""


def is_ignored(relative: PurePath) -> bool:
    """True for hidden files or directories and temp files of writes in progress."""
    if any(part.startswith(".") for part in relative.parts):
        return True
    return relative.name.endswith(TEMP_SUFFIXES)


def object_for(root: Path, path: str) -> tuple[str, str] | None:
    """(bucket, key) for a file under ``root``; None when it is not an object.

    Files directly in ``root`` belong to no bucket; ignored names and names that
    are not valid UTF-8 (S3 keys must be) are skipped.
    """
    try:
        relative = PurePath(path).relative_to(root)
    except ValueError:
        return None
    if len(relative.parts) < 2 or is_ignored(relative):
        return None
    bucket, *rest = relative.parts
    key = "/".join(rest)
    try:
        (bucket + key).encode("utf-8")
    except UnicodeEncodeError:
        log.warning("skipping %r: its name is not valid UTF-8", path)
        return None
    return bucket, key


def signature(path: str) -> Signature | None:
    """The file's signature, or None when it is gone or not a regular file (a link is none: never followed)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass
class _Pending:
    """A file that may be complete, waiting to be seen unchanged for a while."""

    signature: Signature | None = None
    quiet_since: float = 0.0
    whole: bool = False  # its writer closed it, or it was renamed into place


class _Forwarder(FileSystemEventHandler):
    """Hands every watchdog event to one function."""

    def __init__(self, handle: Callable[[FileSystemEvent], None]) -> None:
        self._handle = handle

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._handle(event)


class FolderWatcher:
    """Calls ``on_object(bucket, key)`` once per complete new or changed file under ``root``.

    Uses inotify where it can and falls back to polling (with a warning) when
    inotify cannot start, e.g. at the inotify watch limit. ``on_object`` runs on
    the watcher's own thread, one call at a time; what it raises is logged and
    the watcher carries on. Given ``on_objects`` instead, the watcher calls it
    once per look with every file that look found complete (a burst of files
    becomes a few calls, not one each).
    """

    def __init__(
        self,
        root: Path,
        on_object: Callable[[str, str], None] | None = None,
        settle_seconds: float = 1.0,
        on_removed: Callable[[str, str], None] | None = None,
        on_objects: Callable[[list[tuple[str, str]]], None] | None = None,
    ) -> None:
        if (on_object is None) == (on_objects is None):
            raise ValueError("give on_object or on_objects")
        self.root = Path(root)
        self.settle_seconds = settle_seconds
        self._on_object = on_object
        self._on_objects = on_objects or self._one_by_one
        self._on_removed = on_removed
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._open_count: dict[str, int] = {}
        self._reported: OrderedDict[str, Signature] = OrderedDict()
        self._observer: BaseObserver | None = None
        self._settler: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()  # a file may be complete: look now, not at the next tick
        # inotify tells us when writers close; polling only sees changes.
        self._sees_closes = False

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Begin watching. Files already present are not reported: see :meth:`scan`."""
        if self._observer is not None:
            raise RuntimeError("FolderWatcher is already started")
        if not self.root.is_dir():
            raise FileNotFoundError(f"cannot watch {self.root}: no such directory")
        self._stopping.clear()
        self._wake.clear()
        self._observer = self._start_observer()
        self._settler = threading.Thread(target=self._settle_loop, name="fileproc-watcher", daemon=True)
        self._settler.start()

    def stop(self) -> None:
        """Stop watching and wait (boundedly) for the threads to end. Pending files are dropped."""
        self._stopping.set()
        self._wake.set()
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(_JOIN_SECONDS)
        settler, self._settler = self._settler, None
        if settler is not None and settler is not threading.current_thread():
            settler.join(_JOIN_SECONDS)
            if settler.is_alive():
                log.warning("folder watcher: on_object still running after %.0f s; leaving it", _JOIN_SECONDS)
        with self._lock:
            self._pending.clear()
            self._open_count.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def scan(self) -> Iterator[tuple[str, str]]:
        """Every file present now, as (bucket, key), with the same filters as the watch.

        For a catch-up at start; the caller decides what is new.
        """
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                found = object_for(self.root, path)
                if found is not None and signature(path) is not None:
                    yield found

    def _start_observer(self) -> BaseObserver:
        handler = _Forwarder(self._handle_safely)
        if InotifyObserver is not None:
            try:
                observer = self._launch(InotifyObserver(), handler)
            except OSError as exc:  # ENOSPC / EMFILE: the inotify watch or instance limit
                log.warning("inotify unavailable (%s); watching %s by polling instead", exc, self.root)
            else:
                self._sees_closes = True
                return observer
        self._sees_closes = False
        # Each poll walks the whole tree: no more often than we settle, and never in a busy loop.
        interval = max(0.1, min(1.0, self.settle_seconds))
        return self._launch(PollingObserver(timeout=interval), handler)

    def _launch(self, observer: BaseObserver, handler: FileSystemEventHandler) -> BaseObserver:
        try:
            observer.schedule(handler, str(self.root), recursive=True)
            observer.start()
        except BaseException:
            # The inotify observer runs a reader thread from construction on.
            with contextlib.suppress(Exception):
                observer.stop()
            raise
        return observer

    # -- events (watchdog's thread) ---------------------------------------

    def _handle_safely(self, event: FileSystemEvent) -> None:
        # An exception here would end watchdog's dispatch thread, and with it the watch.
        try:
            self._handle(event)
        except Exception:
            log.exception("folder watcher: could not handle %r", event)

    def _handle(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        kind = event.event_type
        if self._on_removed is not None and not event.is_directory and kind in ("deleted", "moved"):
            removed = object_for(self.root, src)  # None for fileproc's own temporary files
            if removed is not None:
                self._on_removed(*removed)
        with self._lock:
            if event.is_directory:
                # Files in a directory moved or copied in arrive as their own
                # events (watchdog simulates them), so only departures matter here.
                if kind in ("deleted", "moved"):
                    self._forget_tree(src)
            elif kind == "moved":
                self._moved(src, os.fsdecode(event.dest_path))
            elif self._tracked(src):
                self._file_event(kind, src)

    def _file_event(self, kind: str, path: str) -> None:
        """Apply one event for a tracked file; the caller holds the lock."""
        if kind == "deleted":
            self._forget(path)
        elif kind == "opened":
            self._open_count[path] = self._open_count.get(path, 0) + 1
        elif kind in ("closed", "closed_no_write"):
            self._closed(path)
            if kind == "closed":
                self._mark(path, whole=True)
        elif kind == "created" or (kind == "modified" and not self._sees_closes):
            self._mark(path)
        else:  # modified / attrib while a close will follow: a writer is active
            self._touch(path)

    def _tracked(self, path: str) -> bool:
        return object_for(self.root, path) is not None

    def _moved(self, src: str, dest: str) -> None:
        open_count = self._open_count.get(src, 0)
        self._forget(src)
        if self._tracked(dest):
            if open_count:
                self._open_count[dest] = open_count
            self._mark(dest, whole=True)

    def _closed(self, path: str) -> None:
        # Opens made before we watched have no matching count: never go below zero.
        remaining = self._open_count.pop(path, 0) - 1
        if remaining > 0:
            self._open_count[path] = remaining

    def _mark(self, path: str, *, whole: bool = False) -> None:
        """The file may be complete (``whole``: its writer is done): report it once quiet long enough."""
        self._pending[path] = _Pending(signature=None, quiet_since=time.monotonic(), whole=whole)
        if self.settle_seconds == 0:  # nothing to wait for: look now rather than at the next tick
            self._wake.set()

    def _touch(self, path: str) -> None:
        pending = self._pending.get(path)
        if pending is not None:
            pending.quiet_since = time.monotonic()

    def _forget(self, path: str) -> None:
        self._pending.pop(path, None)
        self._open_count.pop(path, None)
        self._reported.pop(path, None)

    def _forget_tree(self, directory: str) -> None:
        prefix = directory.rstrip(os.sep) + os.sep
        for table in (self._pending, self._open_count, self._reported):
            for path in [p for p in table if p.startswith(prefix)]:
                del table[path]

    # -- settling and reporting (the watcher's own thread) -----------------

    def _settle_loop(self) -> None:
        # With no settle time a file only needs its second look (a file renamed in from outside
        # the watch arrives as "created", like one still being written); nothing pending: sleep.
        tick = max(0.02, min(0.25, self.settle_seconds / 5)) if self.settle_seconds else _SECOND_LOOK_SECONDS
        while True:
            self._wake.wait(None if self.settle_seconds == 0 and not self._pending else tick)
            self._wake.clear()
            if self._stopping.is_set():
                return
            found = [f for path in self._take_settled() if (f := object_for(self.root, path)) is not None]
            if found and not self._stopping.is_set():
                self._report(found)

    def _take_settled(self) -> list[str]:
        """Paths quiet for settle_seconds and changed since last reported; removed from pending."""
        now = time.monotonic()
        settled = []
        with self._lock:
            for path, pending in list(self._pending.items()):
                current = signature(path)
                if current is None:  # gone, or replaced by a directory
                    del self._pending[path]
                    continue
                if current != pending.signature:
                    first_look = pending.signature is None
                    pending.signature, pending.quiet_since = current, now
                    # Files that arrive whole need no second look when nothing asks to wait.
                    if not (first_look and pending.whole and self.settle_seconds == 0):
                        continue
                if self._is_settled(path, now - pending.quiet_since):
                    del self._pending[path]
                    if self._reported.get(path) != current:
                        self._remember(path, current)
                        settled.append(path)
        return settled

    def _is_settled(self, path: str, quiet: float) -> bool:
        if quiet < self.settle_seconds:
            return False
        return self._open_count.get(path, 0) == 0 or quiet >= _OPEN_GRACE_SECONDS

    def _remember(self, path: str, current: Signature) -> None:
        self._reported[path] = current
        self._reported.move_to_end(path)
        while len(self._reported) > _REPORTED_MEMORY:
            self._reported.popitem(last=False)

    def _report(self, found: list[tuple[str, str]]) -> None:
        try:
            self._on_objects(found)
        except Exception:
            log.exception("folder watcher: on_objects failed for %d file(s) (%s/%s first)", len(found), *found[0])

    def _one_by_one(self, found: list[tuple[str, str]]) -> None:
        assert self._on_object is not None
        for bucket, key in found:
            try:
                self._on_object(bucket, key)
            except Exception:
                log.exception("folder watcher: on_object failed for %s/%s", bucket, key)


class WatcherSource:
    """The folder watcher as an intake :class:`~fileproc.intake.Source` for the local backend.

    Every complete file under ``root`` (bucket folders), and at start every
    file already there, becomes an event (:func:`~fileproc.objects.event_for`
    from a HEAD of the object) handed to ``submit``. A submit that fails is
    logged; the reconciler finds the file later.
    """

    name = "watcher"

    def __init__(self, root: Path, storage: Storage, submit: Submit, settle_seconds: float = 1.0) -> None:
        self.storage = storage
        self.submit = submit
        self.watcher = FolderWatcher(root, settle_seconds=settle_seconds, on_removed=self._on_removed,
                                     on_objects=self._on_objects)

    def start(self) -> None:
        self.watcher.root.mkdir(parents=True, exist_ok=True)
        self.watcher.start()
        threading.Thread(target=self._catch_up, name="fileproc-catch-up", daemon=True).start()

    def stop(self) -> None:
        self.watcher.stop()

    def _catch_up(self) -> None:
        scan = self.watcher.scan()
        while found := list(itertools.islice(scan, CATCH_UP_BATCH)):
            self._on_objects(found)

    def _on_objects(self, found: list[tuple[str, str]]) -> None:
        """One submit (one transaction, one trip to the broker) for the files one look found."""
        events = [event for event in (self._event(bucket, key) for bucket, key in found) if event is not None]
        if not events:
            return
        try:
            self.submit(events)
        except FileprocError as exc:
            log.warning("could not record %d file(s), %s/%s first (the reconciler will find them): %s",
                        len(events), events[0].bucket, events[0].key, exc)

    def _event(self, bucket: str, key: str) -> ObjectEvent | None:
        problem = name_problem(bucket, key)
        if problem:
            log.warning("ignoring %s/%s: %s", bucket, key, problem)
            return None
        try:
            info = self.storage.head(bucket, key)
        except FileprocError as exc:
            log.warning("cannot read %s/%s: %s", bucket, key, exc)
            return None
        return event_for(bucket, key, info, source=self.name)

    def _on_removed(self, bucket: str, key: str) -> None:
        """A deleted (or moved away) file: an ``s3:ObjectRemoved:Delete`` event, for pipelines that take it."""
        if name_problem(bucket, key):
            return
        event = event_for(bucket, key, event_name=REMOVED, source=self.name, sequencer=f"{time.time_ns():020d}")
        try:
            self.submit([event])
        except FileprocError as exc:
            log.warning("could not record the removal of %s/%s: %s", bucket, key, exc)
