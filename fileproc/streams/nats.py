"""NATS JetStream as a stream engine: a subject's messages, in batches, through one durable pull consumer.

``nats://HOST:PORT/SUBJECT`` reads SUBJECT (a wildcard such as ``orders.>``
too) from the JetStream stream that holds it, made as ``FILEPROC_<subject>``
(file storage) when no stream does. Needs nats-server 2.14+. A mapping is one
durable pull consumer, named after its consumer group, with explicit acks:

- a record's partition is its subject (JetStream keeps each subject's order),
  its position the stream sequence, its key the ``Fileproc-Key`` header that
  ``put`` writes;
- one worker at a time consumes a mapping (a *holding*): the consumer is a
  pinned-client priority group, so the other workers' pulls wait as standbys.
  One of them is pinned when the holder closes (it resets the consumer to its
  ack floor and unpins), or, for a killed holder, once it has not pulled for
  PIN_TTL seconds and its records are free again (ACK_WAIT after its last
  heartbeat). Two pullers of one consumer would split a subject's records
  between them, and its order with them;
- a new holding starts by resetting the consumer to its ack floor: what the
  last holder had not acked comes again in stream order. (JetStream's own
  redelivery is not in order when other pulls wait: a NAKed or expired
  message goes to the back of its queue each time no waiting pull may take
  it.) Records above the floor that were committed (another subject got
  ahead) are skipped: each commit is also kept, per subject, in the KV
  bucket FILEPROC_COMMITS;
- ``commit`` acks every held message of the subject up to the position,
  records it in that bucket, and returns once the server confirmed both.
  Held messages get an in-progress ack (``+WPI``) every HEARTBEAT seconds,
  so a long batch is never given out again under a holder's feet;
- a lost pin (the server restarted, or this worker stalled past PIN_TTL) is a
  rebalance: the next ``poll`` calls ``revoking`` with the subjects held,
  then drops what it holds (the next holding gives it again).

At least once, as on Lambda: a record comes again only if it was not
committed when its holding ended. Only a holder that stalls past PIN_TTL and
then goes on with the batch it had can overlap its successor.

nats-py is asyncio and the poller a thread: each source runs its connection
on a private event loop in a daemon thread; the public methods wait for the
coroutines they hand to it.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from fileproc.errors import StreamError, network_reason
from fileproc.streams.sources import PartitionStatus, Put, Record, Revoking

if TYPE_CHECKING:
    from fileproc.mappings import StreamMapping

log = logging.getLogger(__name__)
T = TypeVar("T")

GROUP = "fileproc"
"""The priority group every fileproc puller names (the consumer's only one)."""
COMMITS = "FILEPROC_COMMITS"
"""The KV bucket of the positions committed, one key per consumer and subject."""
ACK_WAIT = 30.0
"""Seconds after which JetStream gives a delivered, unacked message again (heartbeats prevent it while held).

A killed holder's records are available again after it: no more than PIN_TTL, so a quiet stream's standby
takes over when the pin moves."""
HEARTBEAT = 10.0
"""Seconds between in-progress acks of the held messages (and pulls that keep the pin)."""
PIN_TTL = 30.0
"""Seconds without a pull after which the server gives the pin to a standby: a killed worker's successor waits this."""
PULL_WAIT = 1.0
"""Seconds a pull request lingers on the server."""
CONNECT_TIMEOUT = 5.0
API_TIMEOUT = 10.0
"""Seconds one JetStream API call or a put's acks may take."""
COMMIT_TIMEOUT = 60.0
"""Seconds a commit keeps trying while the server is away (being restarted): its acks must land."""
MAX_ACK_PENDING = 1_000_000
READ_TIME_PER_RECORD = 0.01
"""Seconds a ``read`` may take per sequence of its range, beyond API_TIMEOUT (one message get per record)."""
KEY_HEADER = "Fileproc-Key"
PIN_HEADER = "Nats-Pin-Id"  # the server's, on each message to the pinned puller (not the record's)

_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def stream_name_for(subject: str) -> str:
    """The JetStream stream fileproc makes for ``subject``: ``orders.>`` -> ``FILEPROC_orders__``."""
    return "FILEPROC_" + _NOT_TOKEN.sub("_", subject)


def _nanos(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _deliver_policy(to: str | datetime | None, mapping: StreamMapping) -> dict[str, Any]:
    """A consumer's deliver policy for a starting position (None: the mapping's)."""
    if to is None:
        to = mapping.starting_timestamp if mapping.starting_position == "at_timestamp" else mapping.starting_position
    if isinstance(to, datetime):
        when = to if to.tzinfo else to.replace(tzinfo=UTC)
        return {"deliver_policy": "by_start_time",
                "opt_start_time": when.astimezone(UTC).isoformat().replace("+00:00", "Z")}
    if to == "trim_horizon":
        return {"deliver_policy": "all"}
    if to == "latest":
        return {"deliver_policy": "new"}
    raise StreamError(f"unknown starting position {to!r}: use trim_horizon, latest or a time")


class _Loop:
    """A private asyncio event loop in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:.0f}s") from None

    def stop(self) -> None:
        async def cancel_rest() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            self.run(cancel_rest(), 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class _Pull:
    """The pull request in flight: how many messages it may still bring, until when."""

    def __init__(self, reply: str, batch: int) -> None:
        self.reply, self.left = reply, batch
        self.until = time.monotonic() + PULL_WAIT + 0.5  # the server's 408 may be lost (a reconnect)

    @property
    def alive(self) -> bool:
        return self.left > 0 and time.monotonic() < self.until


class NatsSource:
    """One mapping's durable pull consumer on a JetStream stream (see the module's docstring)."""

    engine = "nats"

    def __init__(self, mapping: StreamMapping, consumer: str = "") -> None:
        parts = urlsplit(mapping.source)
        self.mapping, self.consumer = mapping, consumer
        self.subject = unquote(parts.path.strip("/"))
        self.server = f"nats://{parts.netloc}"  # with user:password@ when given
        self.where = f"NATS at {parts.hostname}:{parts.port or 4222}"
        self.stream = stream_name_for(self.subject)  # the JetStream stream: or the one found holding the subject
        self.stream_name = self.subject  # what the events' eventSourceARN names (the poller makes the ARN)
        self.durable = _NOT_TOKEN.sub("_", mapping.consumer_group)
        self.event_source_arn = self.subject  # as Redis': the poller makes it an ARN with the region
        self._loop: _Loop | None = None
        self._nc: Client | None = None
        self._kv: KeyValue | None = None
        self._last_error: BaseException | None = None
        self._stream_known = False
        self._revoking: Revoking | None = None
        # Consuming, touched on the loop only:
        self._held: dict[int, Msg] = {}  # stream seq -> delivered message, until acked or dropped
        self._ready: deque[int] = deque()  # held, not handed out yet, in delivery order
        self._committed: dict[str, int] = {}  # subject -> the highest sequence committed (from COMMITS)
        self._arrived: asyncio.Event | None = None
        self._sub: Subscription | None = None
        self._inbox = ""
        self._pulls = 0
        self._pull: _Pull | None = None
        self._last_pull = 0.0
        self._pin: str | None = None  # the pin of this worker's holding (None: a standby)
        self._new_pin: str | None = None  # the server pinned us: a holding to begin
        self._pin_lost = False
        self._failure: str | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    # --- the StreamSource protocol ------------------------------------------------------

    def start(self, revoking: Revoking) -> None:
        """Connect, make the stream and the durable consumer if missing, and pull as a standby until pinned."""
        self._revoking = revoking
        self._run(self._start())

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` records in stream order (waits up to ``timeout`` s for the first)."""
        if self._sub is None:
            raise StreamError(f"{self.mapping.name}: poll before start")
        lost = self._run(self._holding_ended())
        if lost:
            log.warning("stream %s: the NATS consumer %s moved to another puller; giving up %s",
                        self.mapping.name, self.durable, ", ".join(lost))
            if self._revoking is not None:
                self._revoking(lost)
        return self._run(self._poll(max_records, timeout), timeout + API_TIMEOUT + CONNECT_TIMEOUT)

    def commit(self, partition: str, position: str) -> None:
        """Ack every held message of subject ``partition`` up to sequence ``position``; confirmed when it returns."""
        self._run(self._commit(partition, int(position)), COMMIT_TIMEOUT + API_TIMEOUT)

    def status(self) -> list[PartitionStatus]:
        """One row for the mapping's subject: the consumer's ack floor, the stream's last sequence, the lag."""
        return self._run(self._status())

    def read(self, partition: str, first: str, last: str) -> list[Record]:
        """The messages of subject ``partition`` from stream sequence ``first`` to ``last``, got one by one from the
        stream (``STREAM.MSG.GET``: the consumer, its acks and FILEPROC_COMMITS untouched); sequences of other
        subjects, deleted or expired, are skipped."""
        try:
            start, end = int(first), int(last)
        except ValueError:
            raise StreamError(f"{self.mapping.name}: a JetStream position is a stream sequence, not "
                              f"{first!r}..{last!r}") from None
        # One request per record found: a dead letter's batch (up to 10,000) takes seconds, not API_TIMEOUT.
        return self._run(self._read(partition, start, end),
                         API_TIMEOUT + CONNECT_TIMEOUT + max(0, end - start + 1) * READ_TIME_PER_RECORD)

    def put(self, records: Sequence[tuple[bytes | None, bytes]]) -> list[Put]:
        """Publish (key, data) records to JetStream; returns once it acknowledged each (stored durably)."""
        return self._run(self._put(records), API_TIMEOUT * 2)

    def reset(self, to: str | datetime) -> None:
        """Make the durable consumer again from ``to``, forgetting its commits (the mapping's workers stopped)."""
        self._run(self._reset(to))

    def close(self) -> None:
        """Give the pin to a standby (it takes over from the ack floor) and disconnect."""
        if self._loop is None:
            return
        try:
            self._run(self._close())
        finally:
            self._loop.stop()
            self._loop = None

    # --- running coroutines, translating errors -----------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = API_TIMEOUT + CONNECT_TIMEOUT) -> T:
        if self._loop is None:
            self._loop = _Loop(f"nats-{self.mapping.name}")
        try:
            return self._loop.run(coro, timeout)
        except StreamError:
            raise
        except (nats.errors.Error, OSError, TimeoutError, ValueError) as exc:
            raise StreamError(f"{self.where}: {self._reason(exc)}") from exc

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, nats.errors.NoRespondersError):
            return "JetStream is not enabled on that server (run nats-server with -js)"
        return network_reason(exc) or str(exc) or type(exc).__name__

    async def _connected(self) -> Client:
        if self._nc is not None:
            return self._nc

        async def remember(exc: Exception) -> None:
            self._last_error = exc
            log.debug("stream %s: %s: %s", self.mapping.name, self.where, exc)

        client = Client()
        try:
            # Two tries at first (a refused connection fails at once), then reconnects forever (a restarted
            # server). reconnect_time_wait is typed int but slept as given: a restarted server is found soon.
            await asyncio.wait_for(client.connect(
                self.server, name=f"fileproc {self.mapping.name} {self.consumer}".strip(), connect_timeout=2,
                reconnect_time_wait=0.25, max_reconnect_attempts=1, error_cb=remember),  # type: ignore[arg-type]
                CONNECT_TIMEOUT)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await client.close()
            cause = self._last_error or exc
            raise StreamError(f"cannot reach {self.where}: {self._reason(cause)}") from cause
        client.options["max_reconnect_attempts"] = -1
        self._nc = client
        return client

    async def _api(self, what: str, body: dict[str, Any] | None = None,
                   missing_ok: bool = False) -> dict[str, Any] | None:
        """A JetStream API call (``$JS.API.<what>``); None for "not found" when ``missing_ok``."""
        client = await self._connected()
        answer = await client.request(f"$JS.API.{what}", json.dumps(body or {}).encode(), timeout=API_TIMEOUT)
        reply: dict[str, Any] = json.loads(answer.data)
        error = reply.get("error")
        if error:
            if missing_ok and error.get("code") == 404:
                return None
            raise StreamError(f"{self.where}: {what}: {error.get('description', error)}")
        return reply

    # --- the stream and the consumer ----------------------------------------------------

    async def _find_stream(self) -> bool:
        """Whether a stream holds the subject (``self.stream`` becomes its name)."""
        if self._stream_known:
            return True
        reply = await self._api("STREAM.NAMES", {"subject": self.subject})
        names = (reply or {}).get("streams") or []
        if names:
            self.stream, self._stream_known = names[0], True
        return self._stream_known

    async def _ensure_stream(self) -> None:
        if await self._find_stream():
            return
        await self._api(f"STREAM.CREATE.{self.stream}",
                        {"name": self.stream, "subjects": [self.subject], "storage": "file",
                         "retention": "limits", "discard": "old", "num_replicas": 1})
        self._stream_known = True

    async def _consumer_info(self) -> dict[str, Any] | None:
        return await self._api(f"CONSUMER.INFO.{self.stream}.{self.durable}", missing_ok=True)

    async def _create_consumer(self, to: str | datetime | None) -> None:
        config = {"durable_name": self.durable, "name": self.durable, "filter_subject": self.subject,
                  "ack_policy": "explicit", "ack_wait": _nanos(ACK_WAIT), "max_deliver": -1,
                  "max_ack_pending": MAX_ACK_PENDING, "replay_policy": "instant",
                  "priority_groups": [GROUP], "priority_policy": "pinned_client",
                  "priority_timeout": _nanos(PIN_TTL), **_deliver_policy(to, self.mapping)}
        await self._api(f"CONSUMER.CREATE.{self.stream}.{self.durable}",
                        {"stream_name": self.stream, "config": config, "action": "create"})

    async def _start(self) -> None:
        await self._ensure_stream()
        info = await self._consumer_info()
        if info is None:
            await self._create_consumer(None)
        elif GROUP not in (info.get("config", {}).get("priority_groups") or []):
            raise StreamError(f"{self.where}: the consumer {self.durable} of stream {self.stream} was not "
                              f"made by fileproc (no priority group {GROUP!r}); delete it or name another group")
        await self._commits()
        self._arrived = asyncio.Event()
        await self._subscribe()
        self._heartbeat = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _reset(self, to: str | datetime) -> None:
        await self._ensure_stream()
        await self._api(f"CONSUMER.DELETE.{self.stream}.{self.durable}", missing_ok=True)
        await self._forget_commits()
        await self._create_consumer(to)

    async def _commits(self) -> KeyValue:
        """The FILEPROC_COMMITS bucket (made on first use)."""
        if self._kv is None:
            jetstream = (await self._connected()).jetstream(timeout=API_TIMEOUT)
            try:
                self._kv = await jetstream.key_value(COMMITS)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await jetstream.create_key_value(bucket=COMMITS, history=1, storage="file")
        return self._kv

    def _commit_key(self, subject: str = "") -> str:
        """STREAM.CONSUMER.SUBJECT (base64url: a subject may hold what a key may not); no subject: the prefix."""
        token = base64.urlsafe_b64encode(subject.encode()).decode().rstrip("=")
        return f"{_NOT_TOKEN.sub('_', self.stream)}.{self.durable}.{token or '>'}"

    async def _load_commits(self) -> dict[str, int]:
        """Subject -> the highest position this consumer committed, from FILEPROC_COMMITS."""
        watcher = await (await self._commits()).watch(self._commit_key(), ignore_deletes=True)
        committed: dict[str, int] = {}
        try:
            async for entry in watcher:
                if entry is None:  # caught up
                    break
                token = entry.key.rsplit(".", 1)[1]
                subject = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
                committed[subject] = int(entry.value or b"0")
        finally:
            await watcher.stop()
        return committed

    async def _forget_commits(self) -> None:
        kv = await self._commits()
        for subject in await self._load_commits():
            await kv.purge(self._commit_key(subject))

    # --- pulling ------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        """A fresh inbox for this worker's pulls; what still comes to the previous one is ignored."""
        client = await self._connected()
        old, self._inbox = self._sub, client.new_inbox()
        inbox = self._inbox

        async def delivered(msg: Msg) -> None:
            if inbox == self._inbox:
                await self._delivered(msg)

        self._sub, self._pull = await client.subscribe(f"{inbox}.*", cb=delivered), None
        if old is not None:
            with contextlib.suppress(nats.errors.Error):
                await old.unsubscribe()
            await client.flush()  # the server has dropped the old pulls' interest: nothing more goes there

    async def _request(self, batch: int) -> None:
        """Ask for up to ``batch`` more messages (lingering PULL_WAIT), with our pin if we hold it."""
        client = await self._connected()
        self._pulls += 1
        pull = _Pull(f"{self._inbox}.{self._pulls}", batch)
        body: dict[str, Any] = {"batch": batch, "expires": _nanos(PULL_WAIT), "group": GROUP}
        if self._pin:
            body["id"] = self._pin
        self._pull, self._last_pull = pull, time.monotonic()
        await client.publish(f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}",
                             json.dumps(body).encode(), reply=pull.reply)

    async def _delivered(self, msg: Msg) -> None:
        """A message on our inbox: a record, or a status that ends a pull request."""
        headers = msg.headers or {}
        if headers.get("Status"):
            self._on_status(msg, headers["Status"], headers.get("Description", ""))
            return
        if self._pull is not None:  # records come with their own subject: count them against the last pull
            self._pull.left -= 1
        pin = headers.get(PIN_HEADER)
        if self._new_pin is not None:
            return  # a holding is beginning: everything comes again after its reset
        if pin != self._pin:
            self._new_pin = pin  # _poll begins the holding
            self._wake()
            return
        seq = msg.metadata.sequence.stream
        if seq <= self._committed.get(msg.subject, 0):
            await msg.ack()  # committed before this holding (its subject got ahead of the ack floor)
            return
        if seq in self._held:  # redelivered while held: keep the newest delivery
            self._held[seq] = msg
            return
        self._held[seq] = msg
        self._ready.append(seq)
        self._wake()

    def _wake(self) -> None:
        assert self._arrived is not None
        self._arrived.set()

    def _on_status(self, msg: Msg, status: str, description: str) -> None:
        ends_pull = self._pull is not None and msg.subject == self._pull.reply
        if status == "100":  # an idle heartbeat
            return
        if status == "423":  # Nats-Wrong-Pin-Id: another puller holds the consumer now
            self._pin, self._pin_lost = None, True
            self._wake()
        elif status in ("404", "408") or (status == "409" and "Consumer Deleted" not in description):
            pass  # no messages, expired, or a limit reached: the request is over
        else:
            self._failure = f"the consumer {self.durable} of stream {self.stream}: {status} {description}"
            self._wake()
        if ends_pull:
            self._pull = None

    async def _holding_ended(self) -> list[str]:
        """The subjects held when the holding ended (pin lost or replaced), for ``revoking``; [] if it goes on."""
        if not (self._pin_lost or self._new_pin is not None):
            return []
        return sorted({msg.subject for msg in self._held.values()})

    async def _begin_holding(self, pin: str) -> None:
        """Pinned: reset the consumer to its ack floor (what the last holder left comes again, in order)."""
        await self._subscribe()
        await self._api(f"CONSUMER.RESET.{self.stream}.{self.durable}")
        self._committed = await self._load_commits()
        self._pin, self._new_pin = pin, None
        log.info("stream %s: this worker (%s) now consumes %s", self.mapping.name, self.consumer or "-",
                 self.subject)

    async def _poll(self, max_records: int, timeout: float) -> list[Record]:
        assert self._arrived is not None
        if self._pin_lost or self._new_pin is not None:
            self._held.clear()  # not acked: the next holding gives them again
            self._ready.clear()
            self._pin_lost = False
        if self._new_pin is not None:
            await self._begin_holding(self._new_pin)
        deadline = time.monotonic() + timeout
        while not self._ready and not self._failure and not self._pin_lost and self._new_pin is None:
            if self._pull is None or not self._pull.alive:
                await self._request(max_records)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, PULL_WAIT))
        if self._failure:
            raise StreamError(f"{self.where}: {self._failure}")
        records: list[Record] = []
        while self._ready and len(records) < max_records and not self._pin_lost and self._new_pin is None:
            msg = self._held.get(self._ready.popleft())
            if msg is not None:
                records.append(self._record(msg))
        if self._pin and (self._pull is None or not self._pull.alive) and len(self._ready) < max_records:
            await self._request(max_records - len(self._ready))  # the next batch flows while this one runs
        return records

    def _record(self, msg: Msg) -> Record:
        return _record_of(msg.subject, msg.metadata.sequence.stream, msg.data, msg.headers, msg.metadata.timestamp)

    async def _keep_alive(self) -> None:
        """Every HEARTBEAT s: +WPI for each held message, and a pull if none went out since (keeps the pin)."""
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                client = await self._connected()
                for msg in list(self._held.values()):
                    await client.publish(msg.reply, b"+WPI")
                if self._pin and time.monotonic() - self._last_pull >= HEARTBEAT:
                    await self._request(1)
            except (nats.errors.Error, StreamError) as exc:  # disconnected: the next beat goes through
                log.debug("stream %s: heartbeat: %s", self.mapping.name, exc)

    # --- commits --------------------------------------------------------------------------

    async def _until(self, deadline: float, attempt: Callable[[float], Awaitable[object]],
                     holding: bool = False) -> None:
        """Run ``attempt(timeout)`` until it succeeds, through a restarting server's silence, up to ``deadline``.

        ``holding``: stop waiting once this worker's holding ended (the server does not answer an ack of what
        it has not delivered since its reset; the commit is in FILEPROC_COMMITS all the same).
        """
        while True:
            ended = holding and self._pin is None
            try:
                await attempt(0.05 if ended else min(5.0, max(0.1, deadline - time.monotonic())))
                return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
                if ended:
                    return
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _commit(self, partition: str, seq: int) -> None:
        client, kv = await self._connected(), await self._commits()
        deadline = time.monotonic() + COMMIT_TIMEOUT
        replies = [msg.reply for s, msg in sorted(self._held.items()) if s <= seq and msg.subject == partition]

        async def ack(timeout: float) -> None:
            # One queue takes a consumer's acks, in order: the answer to the last says the others were applied.
            for reply in replies[:-1]:
                await client.publish(reply, b"+ACK")
            await client.request(replies[-1], b"+ACK", timeout=timeout)

        if replies:
            await self._until(deadline, ack, holding=True)
        if seq > self._committed.get(partition, 0):
            await self._until(deadline, lambda _: kv.put(self._commit_key(partition), str(seq).encode()))
            self._committed[partition] = seq
        for s in [s for s, msg in self._held.items() if s <= seq and msg.subject == partition]:
            del self._held[s]

    async def _close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._sub is not None and self._nc is not None and self._nc.is_connected:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            if self._pin:  # what this holding did not ack becomes available again, and a standby takes it now
                with contextlib.suppress(StreamError, nats.errors.Error):
                    await self._api(f"CONSUMER.RESET.{self.stream}.{self.durable}")
                    await self._api(f"CONSUMER.UNPIN.{self.stream}.{self.durable}", {"group": GROUP})
        self._sub = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    # --- status and put -----------------------------------------------------------------

    async def _status(self) -> list[PartitionStatus]:
        if not await self._find_stream():
            return [PartitionStatus(self.subject, None, None, 0)]
        stream = await self._api(f"STREAM.INFO.{self.stream}") or {}
        last = int(stream.get("state", {}).get("last_seq", 0))
        newest = str(last) if last else None
        info = await self._consumer_info()
        if info is None:
            return [PartitionStatus(self.subject, None, newest, None)]
        floor = int(info.get("ack_floor", {}).get("stream_seq", 0))
        lag = int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0))
        oldest = await self._time_after(floor) if lag else None
        return [PartitionStatus(self.subject, str(floor) if floor else None, newest, lag, oldest)]

    async def _read(self, subject: str, start: int, end: int) -> list[Record]:
        if not await self._find_stream():
            raise StreamError(f"{self.where}: no JetStream stream holds {self.subject}")
        client = await self._connected()
        records: list[Record] = []
        seq = max(start, 1)
        while seq <= end:  # the next message of the subject from seq on: gaps cost nothing
            reply = await self._api(f"STREAM.MSG.GET.{self.stream}", {"seq": seq, "next_by_subj": subject},
                                    missing_ok=True)
            message = (reply or {}).get("message")
            if not message or int(message["seq"]) > end:
                break
            seq = int(message["seq"])
            raw_headers = message.get("hdrs")
            # The client's own parser: headers come out as a delivered message's do.
            headers = await client._process_headers(base64.b64decode(raw_headers)) if raw_headers else None
            records.append(_record_of(message["subject"], seq, base64.b64decode(message.get("data") or ""),
                                      headers, _stored_at(message["time"])))
            seq += 1
        return records

    async def _time_after(self, seq: int) -> float | None:
        """When the first message of the subject after ``seq`` arrived (Unix s), for the lag in seconds."""
        reply = await self._api(f"STREAM.MSG.GET.{self.stream}",
                                {"seq": seq + 1, "next_by_subj": self.subject}, missing_ok=True)
        stamp = ((reply or {}).get("message") or {}).get("time")
        return _stored_at(stamp).timestamp() if stamp else None

    def _subject_for(self, key: bytes | None) -> str:
        """Where a put record goes: the subject, its wildcards replaced by the key (one subject per key)."""
        tokens = self.subject.split(".")
        if not any(token in ("*", ">") for token in tokens):
            return self.subject
        if not key:
            raise StreamError(f"{self.mapping.name}: the subject {self.subject} has wildcards: a record put to it "
                              "needs a key (it takes the wildcards' place)")
        token = _NOT_TOKEN.sub("_", key.decode("utf-8", "replace"))
        return ".".join(token if t in ("*", ">") else t for t in tokens)

    async def _put(self, records: Sequence[tuple[bytes | None, bytes]]) -> list[Put]:
        # Every record checked before the first is sent: a put is stored whole or refused whole.
        subjects = [self._subject_for(key) for key, _ in records]
        headers = [{KEY_HEADER: self._header_key(key)} if key is not None else None for key, _ in records]
        await self._ensure_stream()
        client = await self._connected()
        loop = asyncio.get_running_loop()
        answers: list[asyncio.Future[Msg]] = [loop.create_future() for _ in records]

        async def answered(msg: Msg) -> None:
            future = answers[int(msg.subject.rsplit(".", 1)[1])]
            if not future.done():
                future.set_result(msg)

        inbox = client.new_inbox()
        sub = await client.subscribe(f"{inbox}.*", cb=answered)
        try:
            # One after another on one connection: JetStream stores them in this order.
            for index, (_, data) in enumerate(records):
                await client.publish(subjects[index], data, reply=f"{inbox}.{index}", headers=headers[index])
            await client.flush()
            replies = await asyncio.wait_for(asyncio.gather(*answers), API_TIMEOUT)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return [self._stored(reply, subject) for reply, subject in zip(replies, subjects, strict=True)]

    def _header_key(self, key: bytes) -> str:
        try:
            text = key.decode()
        except UnicodeDecodeError:
            raise StreamError(f"{self.mapping.name}: a NATS record's key is text (UTF-8)") from None
        if "\r" in text or "\n" in text:
            raise StreamError(f"{self.mapping.name}: a NATS record's key is one line")
        return text

    def _stored(self, reply: Msg, subject: str) -> Put:
        status = (reply.headers or {}).get("Status")
        if status == "503":
            raise StreamError(f"{self.where}: no JetStream stream holds {subject}")
        answer = json.loads(reply.data)
        if "error" in answer:
            raise StreamError(f"{self.where}: put to {subject}: {answer['error'].get('description')}")
        return Put(partition=subject, position=str(answer["seq"]))


def _record_of(subject: str, seq: int, data: bytes, headers: dict[str, str] | None, stored: datetime) -> Record:
    """The record of a JetStream message, delivered to the consumer or got from the stream."""
    headers = headers or {}
    key = headers.get(KEY_HEADER)
    return Record(partition=subject, position=str(seq), data=data, key=key.encode() if key is not None else None,
                  timestamp=stored.timestamp(),
                  headers=tuple((name, value.encode()) for name, value in headers.items() if name != PIN_HEADER))


def _stored_at(stamp: str) -> datetime:
    """When JetStream stored a message, from the RFC 3339 time (nanoseconds) of a message get: the same
    datetime as a delivered message's ``metadata.timestamp``, which nats-py makes of the nanoseconds in its ack
    subject (as a float first: computed otherwise, the microseconds may differ by one)."""
    whole, _, fraction = stamp.removesuffix("Z").partition(".")
    nanos = int(datetime.fromisoformat(f"{whole}+00:00").timestamp()) * 1_000_000_000 + int((fraction + "0" * 9)[:9])
    return datetime.fromtimestamp(nanos / 1_000_000_000.0, UTC)


__all__ = ["NatsSource", "stream_name_for"]
