"""One mapping consumed: records polled, filtered, batched per partition, run, and committed after success.

The poller's thread owns the engine's connection (:mod:`.sources`): it
polls, hands each partition's records to that partition's lanes, and
commits. A lane (:class:`Lane`, a thread) builds batches (``batch_size``
records, or what came within ``batch_window`` seconds, never across a
tumbling window) and runs them one after another, so a partition's records
run in order; with ``parallelization_factor`` N a partition has N lanes and
a record goes to the lane of its key, so each key keeps its order. While a
batch runs, the next full batch is already sent to the same runner, queued
behind it (:class:`fileproc.runtime.runner_loop.Chained`): the runner starts
it the moment the one before succeeded, by the rule the lane judges a batch
by, and never otherwise; so the runner does not wait for the lane's
bookkeeping between batches.

A partition's committed position only moves past a record once it and every
record before it is done (:class:`Positions`): run by a batch that
succeeded, filtered out, or given up with its dead letter recorded
(:mod:`.failures`). A worker killed mid-batch commits nothing of the batches
it had in flight (the one running, and the one queued behind it): they run
again, and only they (at least once, as on Lambda).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from fileproc.errors import FileprocError
from fileproc.functions.aws import aws_region
from fileproc.functions.batches import RecordBatch
from fileproc.intake.queued import submit_notifications
from fileproc.runtime import cpus
from fileproc.runtime.direct import EventCall, Invocation, Recorder
from fileproc.state.streams import PartitionCounts, save_lag, save_partitions
from fileproc.streams import events
from fileproc.streams.engines import open_source
from fileproc.streams.failures import Failures
from fileproc.streams.filtering import compile_filters, record_document
from fileproc.streams.sources import Record, StreamSource

if TYPE_CHECKING:
    from fileproc.mappings import StreamMapping
    from fileproc.service import Service

log = logging.getLogger(__name__)

SAVE_EVERY = 1.0  # seconds between writes of the partitions' counts
LAG_EVERY = 30.0  # seconds between samples of the lag (the dashboard's chart)
RETRY_AWAY_MAX = 5.0  # seconds at most between tries of an engine gone away (it is read again within this)
MAX_BUFFERED_BATCHES = 4  # per lane: the poller waits before reading more
CHAINED = 2  # per lane: batches sent to the runner at once, each chained behind the one before it
READ_BATCHES = 4  # batches read at most per poll (a lane keeps full batches waiting, to send behind the one running)


class Positions:
    """One partition's records in order, and which are done: the position it may commit up to."""

    def __init__(self) -> None:
        self._order: deque[str] = deque()
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def add(self, positions: list[str], *, done: tuple[str, ...] | set[str] = ()) -> None:
        """Records taken, in order (``done``: those of them done already, such as records filtered out)."""
        with self._lock:
            self._order.extend(positions)
            self._done.update(done)

    def done(self, positions: list[str]) -> None:
        with self._lock:
            self._done.update(positions)

    def committable(self) -> str | None:
        """The last position before the first record not yet done (None: nothing new to commit)."""
        last = None
        with self._lock:
            while self._order and self._order[0] in self._done:
                last = self._order.popleft()
                self._done.discard(last)
        return last

    def __len__(self) -> int:
        return len(self._order)


class Poller:
    """Consumes one mapping until stopped (a thread of its own, plus one per lane)."""

    def __init__(self, service: Service, mapping: StreamMapping, *, worker: str, embedded_url: str | None = None,
                 source: StreamSource | None = None) -> None:
        self.service, self.mapping, self.worker = service, mapping, worker
        self.source = source or open_source(mapping, embedded_url=embedded_url, consumer=worker)
        self.region = aws_region(service.settings)
        self.arn = events.stream_arn(self.region, getattr(self.source, "stream_name", mapping.name))
        self.filter = compile_filters(mapping.filter)
        self.failures = Failures(service, mapping, self)
        self.recorder: Recorder | None = None  # while running: the invocations' records, written behind the lanes
        self.positions: dict[str, Positions] = {}
        self.lanes: dict[str, list[Lane]] = {}
        self.counts: dict[str, PartitionCounts] = {}
        self.counts_lock = threading.Lock()
        self.stopping = threading.Event()
        self.wake = threading.Event()  # set once a lane has room for more, or a batch is done (to commit)
        self.cpu = cpus.streams_cpu()  # its threads' one CPU (see fileproc.runtime.cpus)
        self._thread: threading.Thread | None = None

    # -- life ---------------------------------------------------------------------------

    def start(self) -> Poller:
        self._thread = threading.Thread(target=self._run, name=f"stream-{self.mapping.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batches in flight (no new retries), commit what is done, leave the group."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        if not self._started():
            return
        cpus.keep_on_one(threading.get_native_id(), self.cpu)  # (once started: an engine's client's own threads,
        # librdkafka's, started by it, run on any CPU)
        recorder = self.recorder = Recorder(self.service, name=f"stream-{self.mapping.name}-records")
        cpus.keep_on_one(recorder.thread_id, self.cpu)
        log.info("stream %s: consuming it (%s) for %s", self.mapping.name, self.mapping.engine,
                 self.mapping.function or "the pipelines its notifications match")
        saved, sampled, pause = time.monotonic(), 0.0, 1.0
        while not self.stopping.is_set():
            self._commit()
            if time.monotonic() - saved > SAVE_EVERY:
                self._save()
                saved = time.monotonic()
            if time.monotonic() - sampled > LAG_EVERY:
                self._sample_lag()
                sampled = time.monotonic()
            if self._backlogged():
                self.wake.clear()
                if self._backlogged():  # (checked again once cleared: a lane taking a batch meanwhile sets it)
                    self.wake.wait(0.05)
                continue
            try:
                records = self.source.poll(self.mapping.batch_size * READ_BATCHES, 0.1)
            except FileprocError as exc:  # the engine went away: keep trying (less and less often), say so
                self.note_error("", str(exc))
                log.warning("stream %s: %s; trying again in %.0f s", self.mapping.name, exc, pause)
                self.stopping.wait(pause)
                pause = min(pause * 2, RETRY_AWAY_MAX)
                continue
            pause = 1.0
            self._take(records)
        self.revoking(list(self.lanes))
        recorder.close()
        self._save()
        try:
            self.source.close()
        except FileprocError as exc:
            log.warning("stream %s: closing: %s", self.mapping.name, exc)

    def _started(self) -> bool:
        """Join the engine's group, trying again while it is unreachable (False: stopped first)."""
        pause = 1.0
        while not self.stopping.is_set():
            try:
                self.source.start(self.revoking)
                return True
            except FileprocError as exc:
                log.warning("stream %s: cannot start yet: %s; trying again in %.0f s", self.mapping.name, exc, pause)
                self.note_error("", str(exc))
                self._save()
                self.stopping.wait(pause)
                pause = min(pause * 2, RETRY_AWAY_MAX)
        return False

    # -- records in -------------------------------------------------------------------------

    def _take(self, records: list[Record]) -> None:
        """Hand polled records to their partitions' lanes (each lane gets its share at once)."""
        for partition, group in itertools.groupby(records, key=attrgetter("partition")):
            taken = list(group)
            positions = self.positions.get(partition)
            if positions is None:
                positions = self.positions[partition] = Positions()
                self.lanes[partition] = [Lane(self, partition, i).start()
                                         for i in range(self.mapping.parallelization_factor)]
            skipped: set[str] = set()
            if not self.filter.matches_all:
                topic = getattr(self.source, "topic", None)
                skipped = {r.position for r in taken
                           if not self.filter.matches(record_document(r, self.mapping.engine, topic=topic))}
                if skipped:
                    self.count(partition, filtered=len(skipped))
            positions.add([r.position for r in taken], done=skipped)
            kept = [r for r in taken if r.position not in skipped] if skipped else taken
            lanes = self.lanes[partition]
            if len(lanes) == 1:
                lanes[0].put(kept)
                continue
            shares: dict[Lane, list[Record]] = {}
            for record in kept:
                shares.setdefault(lanes[hash(record.order_key) % len(lanes)], []).append(record)
            for lane, share in shares.items():
                lane.put(share)

    def _backlogged(self) -> bool:
        return any(lane.backlog() > MAX_BUFFERED_BATCHES * self.mapping.batch_size
                   for lanes in self.lanes.values() for lane in lanes)

    # -- commits ----------------------------------------------------------------------------

    def _commit(self, partitions: list[str] | None = None) -> None:
        for partition in partitions if partitions is not None else list(self.positions):
            position = self.positions[partition].committable()
            if position is None:
                continue
            try:
                self.source.commit(partition, position)
            except FileprocError as exc:  # committed later with the next ones (or run again: at least once)
                self.note_error(partition, f"commit failed: {exc}")

    def revoking(self, partitions: list[str]) -> None:
        """The engine gives ``partitions`` up: let their batches in flight end, commit them, drop the rest."""
        gone = [p for p in partitions if p in self.lanes]
        for partition in gone:
            for lane in self.lanes[partition]:
                lane.stop()
        for partition in gone:
            for lane in self.lanes[partition]:
                lane.join()
        if self.recorder is not None:  # what the lanes ran is done once recorded
            self.recorder.flush()
        self._commit(gone)
        for partition in gone:
            del self.lanes[partition], self.positions[partition]

    def done(self, partition: str, positions: list[str]) -> None:
        """These records of ``partition`` are done (run, or given up): committed once those before them are,
        and once every invocation before now is recorded (never a record committed that ran unrecorded)."""
        if self.recorder is None:
            self._done(partition, positions)
        else:
            self.recorder.after(lambda: self._done(partition, positions))

    def _done(self, partition: str, positions: list[str]) -> None:
        found = self.positions.get(partition)
        if found is not None:
            found.done(positions)
            self.wake.set()  # committed at once (a worker lost then repeats only the batches it had in flight)

    # -- counts -----------------------------------------------------------------------------

    def count(self, partition: str, **deltas: int) -> None:
        with self.counts_lock:
            counts = self.counts.setdefault(partition, PartitionCounts())
            for name, delta in deltas.items():
                setattr(counts, name, getattr(counts, name) + delta)

    def note_error(self, partition: str, error: str) -> None:
        with self.counts_lock:
            counts = self.counts.setdefault(partition, PartitionCounts())
            counts.last_error = error

    def _save(self) -> None:
        with self.counts_lock:
            counts, self.counts = self.counts, {}
        for partition, lanes in self.lanes.items():
            counts.setdefault(partition, PartitionCounts()).in_flight = sum(lane.in_flight for lane in lanes)
        try:
            save_partitions(self.service.db, self.mapping.name, self.worker, counts)
        except FileprocError as exc:  # the counts are a courtesy: kept for the next save
            log.debug("stream %s: counts not saved: %s", self.mapping.name, exc)
            with self.counts_lock:
                for partition, c in counts.items():
                    mine = self.counts.setdefault(partition, PartitionCounts())
                    for name in ("batches", "records", "filtered", "failed", "errors"):
                        setattr(mine, name, getattr(mine, name) + getattr(c, name))

    def _sample_lag(self) -> None:
        """The partitions' lag now, for the dashboard's last hour (a courtesy: skipped if it cannot be had)."""
        try:
            found = self.source.status()
            now = time.time()
            save_lag(self.service.db, self.mapping.name, [
                (p.partition, p.lag or 0, round(now - p.oldest_unprocessed, 3) if p.oldest_unprocessed and p.lag
                 else 0.0) for p in found])
        except FileprocError as exc:
            log.debug("stream %s: lag not sampled: %s", self.mapping.name, exc)

    # -- one batch --------------------------------------------------------------------------

    def event_of(self, records: list[Record]) -> RecordBatch:
        """One partition's batch, to become Lambda's event of it in the runner."""
        return events.batch_of(records, kafka=self.mapping.engine == "kafka", region=self.region, arn=self.arn,
                               topic=getattr(self.source, "topic", ""),
                               bootstrap_servers=getattr(self.source, "bootstrap_servers", ""))

    def run_batch(self, partition: str, records: list[Record], event: RecordBatch) -> Invocation:
        """Run the function on one batch (its event built already) and count it."""
        if self.mapping.kind == "notifications":
            return self._submit(partition, records)
        try:
            call = self.prepare_batch(partition, records, event).start()
        except FileprocError as exc:  # no such function (yet), the database away: a failure like any, retried
            return self._failed(partition, exc)
        return self.end_batch(partition, records, call)

    def prepare_batch(self, partition: str, records: list[Record], event: RecordBatch | None = None) -> EventCall:
        """The invocation of one batch, ready to start (FileprocError: no such function, say)."""
        first, last = records[0].position if records else "-", records[-1].position if records else "-"
        return EventCall(
            self.service, self.mapping.function, event or self.event_of(records), trigger=f"stream:{self.mapping.name}",
            what=f"{events.shard_id(partition)}/{first}-{last}", worker=self.worker,
            summary={"stream": self.mapping.name, "partition": partition, "first": first, "last": last,
                     "records": len(records)}, recorder=self.recorder)

    def end_batch(self, partition: str, records: list[Record], call: EventCall) -> Invocation:
        """A batch's invocation once it ended: recorded and counted."""
        try:
            invocation = call.recorded()
        except FileprocError as exc:  # the database away while recording a failure: a failure, retried
            return self._failed(partition, exc)
        self.count(partition, batches=1, records=len(records) if invocation.ok else 0,
                   errors=0 if invocation.ok else 1)
        if not invocation.ok and invocation.error:
            self.note_error(partition, f"{invocation.error.get('errorType')}: {invocation.error.get('errorMessage')}")
        return invocation

    def _failed(self, partition: str, exc: FileprocError) -> Invocation:
        error = {"errorType": type(exc).__name__, "errorMessage": str(exc)}
        self.count(partition, batches=1, errors=1)
        self.note_error(partition, f"{error['errorType']}: {error['errorMessage']}")
        return Invocation("", False, error=error)

    def _submit(self, partition: str, records: list[Record]) -> Invocation:
        """A batch of bucket notifications: recorded as jobs through the one intake path (no function runs)."""
        try:
            done = submit_notifications(self.service, [r.data for r in records], source=f"stream:{self.mapping.name}")
        except FileprocError as exc:  # the database or the store away: retried like a failed batch
            self.count(partition, errors=1)
            self.note_error(partition, str(exc))
            return Invocation("", False, error={"errorType": type(exc).__name__, "errorMessage": str(exc)})
        self.count(partition, batches=1, records=len(records))
        if done.rejected:
            self.note_error(partition, f"not a notification: {done.rejected[-1]}")
        return Invocation("", True, result={"events": done.events, "jobs": done.jobs, "rejected": done.rejected})


class Lane(threading.Thread):
    """Runs one share of a partition's records (all of them, with a parallelization factor of 1), in order."""

    def __init__(self, poller: Poller, partition: str, index: int) -> None:
        super().__init__(name=f"stream-{poller.mapping.name}-{partition}-{index}", daemon=True)
        self.poller, self.partition = poller, partition
        self.mapping = poller.mapping
        self.records: deque[Record] = deque()
        self.arrived = threading.Condition()
        self.stopping = threading.Event()
        self.in_flight = 0
        self.window = Window(poller, partition) if self.mapping.tumbling_window else None

    def start(self) -> Lane:  # type: ignore[override]
        super().start()
        return self

    def put(self, records: list[Record]) -> None:
        with self.arrived:
            self.records.extend(records)
            self.arrived.notify()

    def backlog(self) -> int:
        return len(self.records)

    def stop(self) -> None:
        self.stopping.set()
        with self.arrived:
            self.arrived.notify()

    def run(self) -> None:
        cpus.keep_on_one(threading.get_native_id(), self.poller.cpu)
        held: Record | None = None  # a record of the next tumbling window, kept for the next batch
        # Without a tumbling window (whose state goes from one invocation to the next), full batches waiting
        # are sent to the runner while the one before them runs, each chained behind the one before it: the
        # runner starts one the moment the one before it succeeded (by the lane's rule) and never otherwise.
        # So a batch still never starts before the one before it ended well, and the runner never waits
        # for the lane's bookkeeping.
        ahead = self.window is None and self.mapping.kind != "notifications"
        sent: deque[tuple[list[Record], EventCall]] = deque()  # batches sent, in order, not yet ended
        try:
            while True:
                if not sent:
                    if self.stopping.is_set():
                        return
                    batch, held = self._next_batch(held)
                    if self.window is not None:
                        self.window.maybe_close(batch[0] if batch else held)
                    if not batch:
                        continue
                    begun = self._begin(batch) if ahead else None
                    if begun is None:
                        if not self._process(batch):
                            return
                        continue
                    sent.append(begun)
                while len(sent) < CHAINED and not self.stopping.is_set():
                    following = self._waiting_batch()
                    begun = self._begin(following, behind=sent[-1][1]) if following is not None else None
                    if begun is None:
                        if following is not None:
                            self.unget(following)
                        break
                    sent.append(begun)
                batch, call = sent.popleft()
                self.in_flight = len(batch)
                ended = call.ended()
                if ended.not_run or not (ended.ok and self.poller.failures.failed_from(batch, ended) is None):
                    self._not_run_behind(sent)  # (the runner judges a batch as the lane does: none of them ran)
                    if ended.not_run:  # (its runner ended with the one before it) it goes back first in line
                        self.unget(batch)
                        continue
                if not self._process(batch, self.poller.end_batch(self.partition, batch, call)):
                    return
        finally:
            for _, call in sent:  # (stopped by an unexpected error) their runner is given back
                call.ended()

    def _not_run_behind(self, sent: deque[tuple[list[Record], EventCall]]) -> None:
        """The batches chained behind one that failed: told "not run" by the runner, back first in line, in order."""
        back = []
        while sent:
            batch, call = sent.popleft()
            if call.ended().not_run:
                back.append(batch)
                continue
            log.error("stream %s: a batch of %s ran after the one before it failed", self.mapping.name,
                      self.partition)
            self.poller.end_batch(self.partition, batch, call)
            self.poller.done(self.partition, [r.position for r in batch])
        for batch in reversed(back):
            self.unget(batch)

    def _process(self, batch: list[Record], first: Invocation | None = None) -> bool:
        """Run ``batch`` to its end (``first``: how its first invocation ended); False if stopped first."""
        self.in_flight = len(batch)
        try:
            done = self.poller.failures.process(self.partition, batch, self.window, self.stopping, first=first)
        except Exception:
            log.exception("stream %s: batch of %s failed unexpectedly", self.mapping.name, self.partition)
            done = False
        self.in_flight = 0
        if done:
            self.poller.done(self.partition, [r.position for r in batch])
        return done  # (not done: stopped mid-retry; nothing of it is committed, it runs again elsewhere)

    def _begin(self, batch: list[Record], *, behind: EventCall | None = None) -> tuple[list[Record], EventCall] | None:
        """``batch``'s invocation started (``behind``: chained behind that one); None if it cannot be here
        (no such function, or one with reserved concurrency behind another): it runs the usual way."""
        try:
            call = self.poller.prepare_batch(self.partition, batch)
            if behind is not None and call.spec.concurrency is not None:
                return None
            call.start(after=behind, item_failures=self.mapping.report_batch_item_failures)
        except FileprocError:
            return None
        except Exception:  # (a bug: the usual way logs it again, and the lane goes on)
            log.exception("stream %s: the batch of %s cannot be sent ahead", self.mapping.name, self.partition)
            return None
        return batch, call

    def _waiting_batch(self) -> list[Record] | None:
        """A full batch, if one is waiting already (taken from the lane)."""
        with self.arrived:
            size = self.mapping.batch_size
            if len(self.records) < size:
                return None
            take = self.records.popleft
            taken = [take() for _ in range(size)]
            self._made_room()
            return taken

    def _made_room(self) -> None:
        """Wake the poller once this lane's backlog is short enough for it to read more."""
        if len(self.records) <= MAX_BUFFERED_BATCHES * self.mapping.batch_size:
            self.poller.wake.set()

    def unget(self, batch: list[Record]) -> None:
        """Put a batch taken ahead back first in line."""
        with self.arrived:
            self.records.extendleft(reversed(batch))

    def _next_batch(self, held: Record | None) -> tuple[list[Record], Record | None]:
        """Up to batch_size records: what came within batch_window of the first (never two windows' records)."""
        self._made_room()
        batch: list[Record] = [held] if held is not None else []
        deadline = time.monotonic() + self.mapping.batch_window
        window = self.window.of(held) if self.window is not None and held is not None else None
        with self.arrived:
            if self.window is None and len(self.records) >= self.mapping.batch_size - len(batch):  # a full batch
                take = self.records.popleft
                batch.extend(take() for _ in range(self.mapping.batch_size - len(batch)))
                return batch, None
            while len(batch) < self.mapping.batch_size and not self.stopping.is_set():
                if not self.records:
                    left = deadline - time.monotonic() if batch else 0.2
                    if left <= 0 or (not self.arrived.wait(left) and not batch):
                        break
                    continue
                record = self.records.popleft()
                if self.window is not None:
                    if window is None:
                        window = self.window.of(record)
                    elif self.window.of(record) != window:
                        return batch, record
                batch.append(record)
        return batch, None


class Window:
    """Lambda's tumbling windows on one lane: the state carried between a window's invocations."""

    def __init__(self, poller: Poller, partition: str) -> None:
        self.poller, self.partition = poller, partition
        self.seconds = poller.mapping.tumbling_window
        self.start: float | None = None
        self.state: dict[str, Any] = {}

    def of(self, record: Record) -> float:
        return record.timestamp - record.timestamp % self.seconds

    def event(self, records: list[Record], *, final: bool = False) -> RecordBatch:
        """The batch with the window's fields (the window of its records, or the one closing)."""
        start = self.of(records[0]) if records else (self.start or 0.0)
        if self.start is None or start != self.start:
            self.start, self.state = start, {}
        return events.with_window(self.poller.event_of(records), start=start, end=start + self.seconds,
                                  state=self.state, partition=self.partition, final=final)

    def carry(self, result: Any) -> None:
        """What the handler returned: its ``state`` goes to the window's next invocation."""
        if isinstance(result, dict) and isinstance(result.get("state"), dict):
            self.state = result["state"]

    def maybe_close(self, upcoming: Record | None) -> None:
        """The final invocation of the open window, once a later record came or the window's end passed."""
        if self.start is None:
            return
        end = self.start + self.seconds
        later = upcoming is not None and self.of(upcoming) >= end
        if not later and (upcoming is not None or time.time() < end + self.poller.mapping.batch_window):
            return
        invocation = self.poller.run_batch(self.partition, [], self.event([], final=True))
        if not invocation.ok:
            log.warning("stream %s: the final invocation of a window failed: %s", self.poller.mapping.name,
                        invocation.error)
        self.start, self.state = None, {}


__all__ = ["Lane", "Poller", "Positions", "Window"]
