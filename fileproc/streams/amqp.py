"""RabbitMQ (AMQP 0-9-1) as a stream engine (``amqp://``): a queue others fill, consumed as a reliable queue.

``amqp://USER:PASSWORD@HOST:PORT/[VHOST/]QUEUE`` reads QUEUE (``amqps://``
with TLS; the default virtual host ``/`` is written ``%2F``, or left out).
MinIO's ``notify_amqp`` (as Ceph's AMQP endpoint) publishes each bucket
notification to an exchange with a routing key; a queue bound to it gets
them. A queue is not a log: a message is gone once acked. So, as
:mod:`.redis_lists`, this engine is one partition (``0``) consumed as a
reliable queue:

- the queue is declared if missing, durable, with
  ``x-single-active-consumer``: however many workers consume the mapping,
  RabbitMQ delivers to one at a time (the others' consumers stand by) and
  the queue's order is kept. A queue that exists without that argument is
  refused (RabbitMQ answers PRECONDITION_FAILED), and the error says so;
- ``?exchange=NAME&exchange_type=TYPE&routing_key=KEY`` (TYPE ``direct``
  unless given, KEY empty) also declares the exchange, durable, and binds
  the queue to it with KEY, on every connection: nothing MinIO publishes
  before fileproc first starts, or after RabbitMQ restarted, is dropped as
  unroutable. MinIO declares the exchange too, on each publish, so declare
  it as fileproc does: the same ``exchange_type`` and ``durable=on``
  (otherwise RabbitMQ refuses the second declaration: PRECONDITION_FAILED,
  inequivalent arg 'durable'); with ``delivery_mode=2`` (persistent
  messages) and a ``queue_dir``, nothing is lost while RabbitMQ is away;
- a record is one message: position a number this source gives each
  delivery (1, 2, ...; a delivery tag is valid only on the channel that got
  it, and a message given again gets a new number); key the
  ``fileproc-key`` header ``put`` writes, else the routing key it was
  published to an exchange with (None when empty); data the body;
  timestamp the message's ``timestamp`` property, else when it arrived
  (MinIO sets none);
- manual acks, with a prefetch of PREFETCH_BATCHES batches; ``commit``
  acks every message delivered up to the position at once (``multiple``)
  and returns once the queue has taken the ack (a passive declare, which
  the queue answers after it);
- a worker that stops, or is killed, mid-batch: RabbitMQ puts its unacked
  messages back in their places at the head of the queue and makes the
  next consumer the active one, which gets them first, in order (single
  active consumer, and a classic queue's requeue in place). Nothing is
  lost; only what was in flight runs again (at least once, as on Lambda);
- a lost connection (RabbitMQ restarted) is a rebalance: the next ``poll``
  calls ``revoking`` (the batches in flight end; their acks are void and
  RabbitMQ gives their messages again), then connects and declares again.

Positions are one consumer's, so from outside a worker ``fileproc streams
status`` shows no committed or newest position, and as lag the messages
waiting in the queue: RabbitMQ tells how many were delivered and not acked
only to its management API (those are the poller's in flight). Starting
positions: a queue holds only what was not consumed yet, so
``trim_horizon`` and ``latest`` both take what waits (Lambda's RabbitMQ
mappings have no starting position); a time is refused. ``fileproc streams
reset --to latest`` purges the queue (its workers stopped); nothing can be
read again (``read``).

The poller calls ``start``, ``poll``, ``commit``, ``status`` and ``close``
from its one thread, and kombu's connections are not thread-safe: a
source's connection is made and used on that thread only (``status``,
``put`` and ``reset`` on a second channel of it); the CLI's calls make a
source of their own. No AMQP heartbeats: the poller does not read the
socket while its lanes are full, and RabbitMQ would close a connection
whose heartbeats stopped; TCP keepalives find a dead peer instead.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from kombu import Connection
from kombu.exceptions import KombuError
from kombu.transport.pyamqp import Transport

from fileproc.errors import StreamError, network_reason
from fileproc.streams.sources import PartitionStatus, Put, Record, Revoking

if TYPE_CHECKING:
    from fileproc.mappings import StreamMapping

log = logging.getLogger(__name__)
T = TypeVar("T")

PARTITION = "0"
PREFETCH_BATCHES = 4
"""Batches of messages RabbitMQ may deliver ahead of the acks (basic.qos; the poller buffers as many)."""
CONNECT_TIMEOUT = 5.0
IO_TIMEOUT = 10.0
"""Seconds one AMQP call, or a put's publisher confirms, may take."""
MORE_WAIT = 0.002
"""Seconds a poll that has records waits for the next one already on its way."""
KEY_HEADER = "fileproc-key"

_ERRORS = (*Transport.connection_errors, *Transport.channel_errors, KombuError, OSError)


class AmqpSource:
    """One mapping's RabbitMQ queue, consumed as a reliable queue (see the module's docstring)."""

    engine = "amqp"  # its records are Kinesis' (as a NATS subject's), its filters too

    def __init__(self, mapping: StreamMapping, *, consumer: str = "") -> None:
        parts = urlsplit(mapping.source)
        path = [unquote(p) for p in parts.path.split("/") if p]
        self.vhost, self.queue = (path[0], path[1]) if len(path) == 2 else ("/", path[0])
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        self.exchange = options.get("exchange", "")
        self.exchange_type = options.get("exchange_type", "direct")
        self.routing_key = options.get("routing_key", "")
        self.mapping, self.consumer = mapping, consumer
        self.stream_name = self.queue  # the poller makes it an ARN with the region
        self.event_source_arn = self.queue
        tls = parts.scheme == "amqps"
        self._address: dict[str, Any] = {
            "hostname": parts.hostname or "127.0.0.1", "port": parts.port or (5671 if tls else 5672),
            "userid": unquote(parts.username or "guest"), "password": unquote(parts.password or "guest"),
            "virtual_host": self.vhost, "ssl": tls}
        self.where = f"RabbitMQ at {self._address['hostname']}:{self._address['port']}"
        self._conn: Connection | None = None
        self._channel: Any = None  # the consuming channel (None: not consuming)
        self._side: Any = None  # status, put and reset: in confirm mode
        self._revoking: Revoking | None = None
        self._lost = False  # the consuming connection broke: the next poll tells the poller, then reconnects
        self._arrived: deque[Record] = deque()  # delivered, not polled yet
        self._delivered: deque[tuple[int, int]] = deque()  # (position, delivery tag) not acked, on _channel
        self._given = 0  # the last position given
        self._committed = 0  # the last position acked
        self._unconfirmed: set[int] = set()  # publish sequence numbers of the side channel not confirmed yet
        self._published = 0
        self._refused = 0  # publishes RabbitMQ nacked
        self._side_declared = False

    # -- consuming --------------------------------------------------------------------------

    def start(self, revoking: Revoking) -> None:
        """Connect, declare the queue (and the exchange and binding the URL names), consume (or stand by)."""
        if self.mapping.starting_position == "at_timestamp":
            raise StreamError(f"stream {self.mapping.name!r}: a RabbitMQ queue keeps no times: use "
                              "starting_position = 'trim_horizon' (a queue gives what waits)")
        self._revoking = revoking
        self._guarded(self._consume)

    def _consume(self) -> None:
        channel = self._connected().channel()
        self._declare(channel)
        channel.basic_qos(0, min(65_535, PREFETCH_BATCHES * self.mapping.batch_size), False)
        channel.basic_consume(self.queue, callback=self._arrive, no_ack=False)
        self._channel = channel

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` messages in queue order (waits up to ``timeout`` s for the first)."""
        if self._revoking is None:
            raise StreamError(f"stream {self.mapping.name!r}: poll before start")
        if self._lost:  # (here, in the poller's thread, never inside a commit the poller is making)
            self._lost = False
            log.warning("stream %s: lost the connection to %s; what it had not acked comes again",
                        self.mapping.name, self.where)
            self._revoking([PARTITION])
        if self._channel is None:
            self._guarded(self._consume)
        self._guarded(lambda: self._drain(max_records, timeout))
        return [self._arrived.popleft() for _ in range(min(max_records, len(self._arrived)))]

    def _drain(self, most: int, timeout: float) -> None:
        """Read deliveries until ``most`` wait, none came within ``timeout``, or no more is on its way."""
        assert self._conn is not None
        deadline = time.monotonic() + timeout
        while len(self._arrived) < most:
            wait = MORE_WAIT if self._arrived else max(deadline - time.monotonic(), MORE_WAIT)
            try:
                self._conn.drain_events(timeout=wait)  # one method each: a delivery, or a server's close
            except TimeoutError:  # (socket.timeout)
                if self._arrived or time.monotonic() >= deadline:
                    return

    def _arrive(self, message: Any) -> None:
        """A delivery (called by kombu's client while it reads the socket, on this thread)."""
        self._given += 1
        self._delivered.append((self._given, message.delivery_tag))
        self._arrived.append(_record_of(self._given, message))

    def commit(self, partition: str, position: str) -> None:
        """Ack every message delivered up to ``position`` (one ``multiple`` ack); returns once the queue took it."""
        upto, last = int(position), None
        while self._delivered and self._delivered[0][0] <= upto:
            last = self._delivered.popleft()
        if last is None:  # delivered on a connection since lost (RabbitMQ gives them again), or acked already
            return
        channel, (given, tag) = self._channel, last

        def ack() -> None:
            channel.basic_ack(tag, multiple=True)
            # The queue answers this after the ack (both from this channel's process, in order).
            channel.queue_declare(self.queue, passive=True)

        self._guarded(ack, "cannot commit")
        self._committed = given

    def close(self) -> None:
        """Disconnect: RabbitMQ puts what was not acked back at the head of the queue, for the next consumer."""
        conn, self._conn = self._conn, None
        self._channel = self._side = None
        self._arrived.clear()
        self._delivered.clear()
        self._unconfirmed.clear()
        if conn is not None:
            with contextlib.suppress(*_ERRORS):
                conn.close()

    # -- reading and writing from anywhere --------------------------------------------------

    def status(self) -> list[PartitionStatus]:
        """As lag the messages waiting (plus those this consumer holds unacked); positions only a consumer's own."""
        if self._channel is not None:  # the poller's (on its thread): what was delivered already counts as held
            self._guarded(lambda: self._drain(PREFETCH_BATCHES * self.mapping.batch_size, 0))
        waiting = self._guarded(self._waiting)
        return [PartitionStatus(PARTITION, str(self._committed) if self._committed else None,
                                str(self._given) if self._given else None,
                                None if waiting is None else waiting + len(self._delivered))]

    def _waiting(self) -> int | None:
        """Messages ready in the queue (None: no such queue yet)."""
        try:
            return int(self._side_channel().queue_declare(self.queue, passive=True).message_count)
        except Transport.channel_errors as exc:
            if getattr(exc, "reply_code", None) != 404:
                raise
            self._side = None  # (RabbitMQ closed the channel)
            return None

    def read(self, partition: str, first: str, last: str) -> list[Record]:
        """Nothing to read: an acked message left the queue, and positions are numbers given, not places in it."""
        raise StreamError("a RabbitMQ queue keeps no messages once acked: nothing to replay")

    def put(self, records: Sequence[tuple[bytes | None, bytes]]) -> list[Put]:
        """Publish persistent messages to the queue itself; returns once RabbitMQ confirmed each (stored durably).

        A record's key goes in the ``fileproc-key`` header (a record polled has it as its key); each Put's
        position is the message's place in the queue when it was put (a queue has no other).
        """
        headers = [{KEY_HEADER: self._header_key(key)} if key is not None else None for key, _ in records]
        return self._guarded(lambda: self._publish([data for _, data in records], headers), "cannot put")

    def _publish(self, bodies: list[bytes], headers: list[dict[str, str] | None]) -> list[Put]:
        channel = self._side_channel(declared=True)
        refused = self._refused
        for body, header in zip(bodies, headers, strict=True):
            message = channel.prepare_message(body, content_type="application/octet-stream", headers=header,
                                              properties={"delivery_mode": 2, "timestamp": int(time.time())})
            # Mandatory: a message no queue takes comes back (an error) instead of vanishing.
            channel.basic_publish(message, exchange="", routing_key=self.queue, mandatory=True)
            self._published += 1
            self._unconfirmed.add(self._published)
        deadline = time.monotonic() + IO_TIMEOUT
        while self._unconfirmed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamError(f"stream {self.mapping.name!r}: {self.where} did not confirm "
                                  f"{len(self._unconfirmed)} of {len(bodies)} records within {IO_TIMEOUT:.0f}s")
            assert self._conn is not None
            with contextlib.suppress(TimeoutError):
                self._conn.drain_events(timeout=left)
        if self._refused > refused:
            raise StreamError(f"stream {self.mapping.name!r}: {self.where} refused {self._refused - refused} of "
                              f"{len(bodies)} records (basic.nack)")
        after = int(channel.queue_declare(self.queue, passive=True).message_count)
        return [Put(PARTITION, str(max(1, after - len(bodies) + i + 1))) for i in range(len(bodies))]

    def reset(self, to: str | datetime) -> None:
        """``latest``: drop what waits in the queue (its consumers stopped); nothing else means anything to a queue."""
        if to != "latest":
            raise StreamError(f"stream {self.mapping.name!r}: a RabbitMQ queue keeps no message once acked, nor "
                              "times: it cannot go back; reset it to latest (drops what waits)")
        self._guarded(lambda: self._side_channel(declared=True).queue_purge(self.queue), "cannot reset")

    # -- connections, channels, errors ------------------------------------------------------

    def _connected(self) -> Connection:
        if self._conn is None:
            conn = Connection(**self._address, transport="pyamqp", connect_timeout=CONNECT_TIMEOUT, heartbeat=0,
                              transport_options={
                                  "read_timeout": IO_TIMEOUT, "write_timeout": IO_TIMEOUT,
                                  # What RabbitMQ's tools show the connection as.
                                  "client_properties": {"connection_name": f"fileproc {self.mapping.name} "
                                                                           f"{self.consumer}".strip()}})
            conn.ensure_connection(max_retries=0)  # one try (connect() tries twice, 2 s apart)
            self._conn = conn
        return self._conn

    def _side_channel(self, declared: bool = False) -> Any:
        """The channel of status, put and reset (confirm mode: RabbitMQ acks each message it stored).

        ``declared``: with the queue (and exchange and binding) declared first, as the mapping's consumers
        do (put and reset; status only looks).
        """
        if self._side is None:
            channel = self._connected().channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._confirmed)
            channel.events["basic_nack"].add(self._nacked)
            self._side, self._published, self._side_declared = channel, 0, False
            self._unconfirmed.clear()
        if declared and not self._side_declared:
            self._declare(self._side)
            self._side_declared = True
        return self._side

    def _confirmed(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._unconfirmed = {t for t in self._unconfirmed if t > tag}
        else:
            self._unconfirmed.discard(tag)

    def _nacked(self, tag: int, multiple: bool) -> None:
        before = len(self._unconfirmed)
        self._confirmed(tag, multiple)
        self._refused += before - len(self._unconfirmed)

    def _declare(self, channel: Any) -> None:
        """The queue (durable, one active consumer), and the exchange and binding the URL names."""
        if self.exchange:
            channel.exchange_declare(self.exchange, self.exchange_type, durable=True, auto_delete=False)
        channel.queue_declare(self.queue, durable=True, auto_delete=False,
                              arguments={"x-single-active-consumer": True})
        if self.exchange:
            channel.queue_bind(self.queue, self.exchange, self.routing_key)

    def _header_key(self, key: bytes) -> str:
        try:
            return key.decode()
        except UnicodeDecodeError:
            raise StreamError(f"stream {self.mapping.name!r}: a RabbitMQ record's key is text (UTF-8)") from None

    def _guarded(self, action: Callable[[], T], doing: str = "") -> T:
        """``action()``, any failure of the connection or a channel a StreamError; the connection dropped then."""
        try:
            return action()
        except StreamError:
            raise
        except _ERRORS as exc:
            consuming = self._channel is not None
            self.close()  # (a channel error closed the channel; anything else leaves the connection unusable)
            self._lost = self._lost or consuming
            raise self._error(exc, doing) from exc

    def _error(self, exc: BaseException, doing: str) -> StreamError:
        reason = network_reason(exc)
        what = f"{self.where} unreachable: {reason}" if reason else f"{self.where}: {exc or type(exc).__name__}"
        if "x-single-active-consumer" in str(exc):
            what += (f" (the queue {self.queue!r} was declared without x-single-active-consumer = true, which "
                     "fileproc needs to keep its order with more than one worker: delete it, or declare it so)")
        return StreamError(f"stream {self.mapping.name!r}: {doing + ': ' if doing else ''}{what}")


def _record_of(position: int, message: Any) -> Record:
    """The record of a delivered message (see the module's docstring)."""
    headers = message.headers or {}
    key = headers.get(KEY_HEADER)
    if key is None and message.delivery_info.get("exchange"):  # (through the default exchange it names the queue)
        key = message.delivery_info.get("routing_key") or None
    stamp = message.properties.get("timestamp")
    return Record(partition=PARTITION, position=str(position), data=bytes(message.body),
                  key=key.encode() if isinstance(key, str) else key,
                  timestamp=float(stamp.timestamp() if isinstance(stamp, datetime) else stamp) if stamp
                  else time.time(),
                  headers=tuple((name, _bytes(value)) for name, value in headers.items() if name != KEY_HEADER))


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else str(value)).encode()


__all__ = ["AmqpSource"]
