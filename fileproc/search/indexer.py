"""The indexer: the one writer of a host's search index.

Whoosh allows one writer at a time, and an index written by many processes
at once is how lock errors and corrupt segments happen. So no step ever
opens the index. Steps write *document objects* to storage (that is their
whole part: any number of workers on any hosts); the state database records
each one as an output of the step. The indexer follows those outputs in id
order and applies them in batches, one commit per batch::

    outputs (state DB) --ids above the cursor--> read each document object
        --> index.update(add=[...], delete=[...])  (one commit) --> save the cursor

Nothing is lost to a lock: there is one writer per index folder, held by an
``flock`` on ``writer.lock`` (released by the kernel when its process dies,
so never stale); another process of the same host that wants to write
waits its turn or only searches. A batch that fails is not committed and
the cursor does not move, so it is applied again. Each output is looked up
in storage *as it is now*, so applying one twice, or out of order, ends in
the same index: the one storage describes.

On PostgreSQL, output ids are handed out before their transactions commit,
so a lower id can become visible after a higher one. Each pass therefore
looks again at the last :data:`LOOKBACK` ids below the cursor; an id applied
already is skipped.

A missing or unreadable index is rebuilt from storage (:meth:`Indexer.rebuild`):
every document object under the output locations of the pipelines with an
``index`` step, and the buckets documents were ever written to.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fileproc.config import Settings
from fileproc.errors import FileprocError, ObjectNotFound, StorageError
from fileproc.search import (
    DOCUMENT_CONTENT_TYPE,
    DOCUMENT_NAME,
    Batch,
    Document,
    IndexCorrupt,
    Tombstone,
    parse_document,
)
from fileproc.search.whoosh import WhooshIndex
from fileproc.service import Service

log = logging.getLogger(__name__)

LOOKBACK = 1000
"""Output ids below the cursor looked at again on each pass (see the module docstring)."""

READERS = 8
"""Document objects read from storage at once."""

STAGE_ROWS = 64
"""Outputs staged at a time while following (the hold is looked at in between)."""

QUICK_LOOK = 0.25
"""Seconds between an idle indexer's looks at the newest output id (a pass follows when it changed): a burst
is picked up at once, where a pass every ``search.interval`` costs about 2.5 ms."""

FOLLOW_INTERVAL = 0.2
"""Seconds between passes while a batch is open (documents arriving): the commit follows the stream's pause."""


@dataclass
class Check:
    """How the index and storage compare (``fileproc reindex --check``)."""

    indexed: int = 0
    stored: int = 0
    missing: list[str] = field(default_factory=list)  # in storage, not in the index
    extra: list[str] = field(default_factory=list)  # in the index, not in storage (or deleted)
    stale: list[str] = field(default_factory=list)  # in both, different versions
    sources_gone: list[str] = field(default_factory=list)  # documents whose source object no longer exists

    @property
    def agrees(self) -> bool:
        return not (self.missing or self.extra or self.stale or self.sources_gone)

    def to_dict(self) -> dict[str, object]:
        return {"agrees": self.agrees, "indexed": self.indexed, "stored": self.stored, "missing": self.missing,
                "extra": self.extra, "stale": self.stale, "sources_gone": self.sources_gone}


class Indexer:
    """Applies document objects to ``service``'s search index; see the module docstring."""

    def __init__(self, service: Service, index: WhooshIndex | None = None) -> None:
        self.service = service
        self.directory = service.settings.search_dir
        self.index = index or WhooshIndex(self.directory)
        self.batch = service.settings.search.batch
        self._lock_file: IO[str] | None = None
        self._applied: set[int] = set()  # ids at most LOOKBACK below the cursor, already applied
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._open: Batch | None = None  # staged, not committed yet (see follow)
        self._opened_at = 0.0
        self._staged: set[int] = set()  # the output ids in it

    # --- the writer lock ------------------------------------------------------------------

    def acquire(self, *, wait: bool = False) -> bool:
        """Become this index's writer (True), or find another process is (False, unless ``wait``)."""
        if self._lock_file is not None:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.directory / "writer.lock", "a")  # noqa: SIM115  (held while writing)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return False
        self._lock_file = handle
        self.index.reset()  # another writer may have rebuilt it meanwhile
        return True

    def release(self) -> None:
        self._cancel()  # what was staged is applied again by the next writer: the cursor did not move
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @contextlib.contextmanager
    def writing(self, *, wait: bool = True) -> Iterator[bool]:
        got = self.acquire(wait=wait)
        try:
            yield got
        finally:
            if got:
                self.release()

    # --- the cursor -----------------------------------------------------------------------

    @property
    def _cursor_path(self) -> Path:
        return self.directory / "cursor.json"

    def cursor(self) -> int:
        try:
            return int(json.loads(self._cursor_path.read_text())["after"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _save_cursor(self, after: int) -> None:
        temporary = self._cursor_path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"after": after}))
        os.replace(temporary, self._cursor_path)

    # --- following the outputs ------------------------------------------------------------

    def catch_up(self) -> int:
        """Apply every document written since the cursor; how many outputs were applied. Needs the lock."""
        assert self._lock_file is not None, "call acquire() first"
        self._check_index()
        applied = 0
        while True:
            rows = self._pending(self.batch)
            if not rows:
                return applied
            self._stage(rows)
            applied += self._commit()

    def follow(self, *, hold: float) -> int:
        """One pass of the running indexer: stage what arrived; commit only when the stream pauses.

        Documents are staged into an open batch as they arrive (Whoosh
        analyzes each one then), and the batch is committed when a pass finds
        nothing new, when it holds ``search.batch`` documents, or when its
        first one has waited ``hold`` seconds. A commit costs about as much
        as analyzing its documents again, mostly per distinct word, so under
        a stream of documents fewer, larger commits are much cheaper than one
        per pass. How many outputs were committed. Needs the lock.
        """
        assert self._lock_file is not None, "call acquire() first"
        if self._open is None:
            self._check_index()
        committed, first = 0, True
        while not self._stop.is_set():
            rows = self._pending(min(STAGE_ROWS, self.batch - len(self._staged)))
            if rows:
                self._stage(rows)
            if self._open is None:
                return committed
            paused = not rows and first  # nothing new since the last pass, FOLLOW_INTERVAL ago
            if paused or len(self._staged) >= self.batch or time.monotonic() - self._opened_at >= hold:
                committed += self._commit()
            if not rows:
                return committed
            first = False
        return committed

    def _check_index(self) -> None:
        try:
            if not self.index.exists():
                raise IndexCorrupt("no index yet")
            self.index.count()  # reads the table of contents: a broken one is found here
        except IndexCorrupt as exc:
            log.warning("search index missing or unreadable (%s); rebuilding it from storage", exc)
            self.rebuild()

    def _pending(self, limit: int) -> list[tuple[int, str, str]]:
        """Output rows not applied nor staged yet, oldest first (at most ``limit``)."""
        if limit <= 0:
            return []
        cursor = self.cursor()
        skip = self._applied | self._staged
        return [row for row in self.service.db.outputs_after(max(0, cursor - LOOKBACK), DOCUMENT_CONTENT_TYPE,
                                                             limit=limit + LOOKBACK + len(self._staged))
                if row[0] not in skip][:limit]

    def _stage(self, rows: list[tuple[int, str, str]]) -> None:
        """Read the rows' document objects (several at once) and stage them in the open batch."""
        locations = list(dict.fromkeys((bucket, key) for _, bucket, key in rows))
        with ThreadPoolExecutor(READERS) as pool:
            found_all = list(pool.map(lambda location: self._read(*location), locations))
        adds: dict[str, Document] = {}
        deletes: set[str] = set()
        for found in found_all:
            if isinstance(found, Document):
                adds[found.id] = found
                deletes.discard(found.id)
            elif isinstance(found, Tombstone):
                deletes.add(found.id)
                adds.pop(found.id, None)
        try:
            if self._open is not None and self._open.ids & (set(adds) | deletes):
                self._commit()  # the same document again: what is staged must be committed before it
            if self._open is None:
                self._open, self._opened_at = self.index.begin(), time.monotonic()
            self._open.stage(add=adds.values(), delete=deletes)
        except IndexCorrupt as exc:
            self._cancel()
            log.warning("search index unreadable (%s); rebuilding it from storage", exc)
            self.rebuild()
            return
        except BaseException:
            self._cancel()
            raise
        self._staged |= {row[0] for row in rows}

    def _commit(self) -> int:
        """Commit the open batch and move the cursor past it; how many outputs it held."""
        if self._open is None:
            return 0
        batch, rows = self._open, self._staged
        self._open, self._staged = None, set()
        started = time.monotonic()
        try:
            batch.commit()
        except IndexCorrupt as exc:
            log.warning("search index unreadable (%s); rebuilding it from storage", exc)
            self.rebuild()
            return 0
        except BaseException:
            batch.cancel()
            raise
        cursor = self.cursor()
        top = max(cursor, max(rows))
        self._applied |= rows
        self._applied = {i for i in self._applied if i > top - LOOKBACK}
        self._save_cursor(top)
        log.info("search index: committed %d document(s) in %.2f s, %.2f s after the first was staged", len(rows),
                 time.monotonic() - started, time.monotonic() - self._opened_at)
        return len(rows)

    def _cancel(self) -> None:
        if self._open is not None:
            self._open.cancel()
        self._open, self._staged = None, set()

    def _read(self, bucket: str, key: str) -> Document | Tombstone | None:
        try:
            with self.service.storage.open(bucket, key) as stream:
                return parse_document(stream.read(), f"{bucket}/{key}")
        except ObjectNotFound:
            return None  # overwritten by a later output, or removed: its own row says what became of it

    # --- rebuilding and checking ----------------------------------------------------------

    def stored_documents(self) -> Iterator[Document | Tombstone]:
        """Every document object in storage (see :func:`document_locations`)."""
        for bucket, prefix in document_locations(self.service):
            try:
                listing = list(self.service.storage.list(bucket, prefix))
            except StorageError as exc:
                log.warning("cannot list %s/%s for documents: %s", bucket, prefix, exc)
                continue
            for info in listing:
                if info.key.rpartition("/")[2] != DOCUMENT_NAME:
                    continue
                found = self._read(bucket, info.key)
                if found is not None:
                    yield found

    def rebuild(self) -> int:
        """A new index from the document objects in storage, swapped in at once; how many documents."""
        assert self._lock_file is not None, "call acquire() first"
        self._cancel()  # a batch of the old generation: what it held is in storage, read below
        started_at = self.service.db.last_output_id()  # what lands meanwhile is applied by the next pass
        latest: dict[str, Document] = {}
        for found in self.stored_documents():
            if isinstance(found, Document):
                latest[found.id] = found
        count = self.index.rebuild(latest.values())
        self._applied.clear()
        self._save_cursor(started_at)
        log.info("search index rebuilt from storage: %d documents", count)
        return count

    def check(self, *, sources: bool = True) -> Check:
        """Compare the index with storage (and, with ``sources``, each document with its source object)."""
        result = Check()
        stored: dict[str, str] = {}
        for found in self.stored_documents():
            if isinstance(found, Document):
                stored[found.id] = found.etag
        indexed = self.index.versions()
        result.indexed, result.stored = len(indexed), len(stored)
        result.missing = sorted(set(stored) - set(indexed))
        result.extra = sorted(set(indexed) - set(stored))
        result.stale = sorted(i for i in set(stored) & set(indexed) if stored[i] != indexed[i])
        if sources:
            for doc_id in sorted(stored):
                bucket, _, key = doc_id.partition("/")
                try:
                    self.service.storage.head(bucket, key)
                except ObjectNotFound:
                    result.sources_gone.append(doc_id)
        return result

    # --- running --------------------------------------------------------------------------

    def start(self) -> Indexer:
        """Follow the outputs in a child process of its own.

        Not a thread: indexing is Python code, and in the process that also
        dispatches jobs and answers the API it would share one interpreter
        lock with them and fall behind exactly when documents pour in.
        """
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._process = context.Process(target=_follow_in_child, args=(self.service.settings,),
                                        name="fileproc-indexer", daemon=True)
        self._process.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._process is not None and self._process.is_alive():
            self._process.terminate()  # SIGTERM: it commits what it staged, then exits
            self._process.join(30)
            if self._process.is_alive():
                self._process.kill()
        self.release()

    def _loop(self) -> None:
        """Follow the outputs: a pass every ``search.interval`` seconds, and one as soon as a quick look
        (every :data:`QUICK_LOOK` seconds: the newest output id) finds a new output. The regular pass
        still comes, for ids that became visible below ones already seen (see the module docstring)."""
        settings = self.service.settings.search
        newest, due = -1, 0.0
        while not self._stop.is_set():
            wait = min(settings.interval, QUICK_LOOK)
            try:
                if self.acquire():  # another process of this host may be the writer: then only wait
                    latest = self.service.db.last_output_id()
                    if self._open is not None or latest != newest or time.monotonic() >= due:
                        newest, due = latest, time.monotonic() + settings.interval
                        self.follow(hold=settings.hold)
                    if self._open is not None:
                        wait = min(wait, FOLLOW_INTERVAL)  # documents are arriving: look again soon
            except (FileprocError, IndexCorrupt, OSError) as exc:
                self._cancel()
                wait = settings.interval  # not a warning every quick look while the database is down
                log.warning("indexer: %s (trying again in %.0f s)", exc, wait)
            self._stop.wait(wait)
        try:
            self._commit()  # what was staged, before stopping
        except (FileprocError, IndexCorrupt, OSError) as exc:
            log.warning("indexer: %s", exc)


def _follow_in_child(settings: Settings) -> None:
    """The indexer process: follow the outputs until SIGTERM (see :meth:`Indexer.start`)."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    indexer = Indexer(Service(settings))
    signal.signal(signal.SIGTERM, lambda *_: indexer._stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    parent = os.getppid()

    def orphaned() -> None:  # the parent killed outright: stop too, releasing the writer lock
        while not indexer._stop.wait(1.0):
            if os.getppid() != parent:
                indexer._stop.set()

    threading.Thread(target=orphaned, name="fileproc-indexer-parent", daemon=True).start()
    indexer._loop()
    indexer.release()


def document_locations(service: Service) -> list[tuple[str, str]]:
    """(bucket, prefix) pairs where document objects live.

    The output location of every pipeline with an ``index`` step (the key
    template up to its first placeholder), and every bucket a document was
    ever recorded in (a user function may write them too).
    """
    places: dict[str, str | None] = {}
    for pipeline in service.pipelines.values():
        if not any(step.function == "index" for step in pipeline.steps):
            continue
        bucket = pipeline.output.bucket.replace("{bucket}", pipeline.match.bucket)
        if set("*?[{") & set(bucket):
            continue
        prefix = pipeline.output.key.split("{", 1)[0]
        places[bucket] = prefix if places.get(bucket, prefix) == prefix else ""
    try:
        for bucket in service.db.output_buckets(DOCUMENT_CONTENT_TYPE):
            places[bucket] = ""
    except FileprocError as exc:
        log.warning("cannot read where documents were written: %s", exc)
    return [(bucket, prefix or "") for bucket, prefix in sorted(places.items())]


def searcher(service: Service) -> WhooshIndex:
    """The index to search on this host, brought up to date first when no indexer is running here.

    ``fileproc search`` with nothing else running still finds what the
    workers wrote: it takes the writer lock if it is free and catches up.
    """
    indexer = Indexer(service)
    if indexer.acquire():
        try:
            indexer.catch_up()
        except (FileprocError, OSError) as exc:
            log.warning("could not bring the search index up to date: %s", exc)
        finally:
            indexer.release()
    return indexer.index


def wait_until_indexed(service: Service, timeout: float = 30.0) -> None:
    """Block until this host's index has applied every document recorded so far (tests, scripts)."""
    indexer = Indexer(service)
    deadline = time.monotonic() + timeout
    while service.db.outputs_after(indexer.cursor(), DOCUMENT_CONTENT_TYPE, limit=1):
        if time.monotonic() > deadline:
            raise FileprocError(f"the search index did not catch up in {timeout:g} s")
        with indexer.writing(wait=False) as got:
            if got:
                indexer.catch_up()
                continue
        time.sleep(0.1)


__all__ = ["LOOKBACK", "Check", "Indexer", "document_locations", "searcher", "wait_until_indexed"]
