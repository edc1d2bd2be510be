"""Apache Kafka as a stream engine (``kafka://HOST:PORT[,HOST:PORT...]/TOPIC``), through confluent-kafka.

A mapping's consumers form the Kafka consumer group ``mapping.consumer_group``
and share the topic's partitions; a partition's records come in order. The
group joins with KIP-848's protocol (``group.protocol=consumer``: the broker
assigns, a join takes a fraction of a second) and, on a broker that refuses
it (before Kafka 3.7, or with it disabled), with the classic one
(cooperative-sticky). Offsets are committed only by :meth:`KafkaSource.commit`,
synchronously, never automatically.

A new group starts where the mapping says, pinned at its first assignment:
``trim_horizon`` at the earliest record, ``latest`` at the end then and
``at_timestamp`` at the first record from ``starting_timestamp`` on; for the
last two that start is committed at once, so a consumer that stops before
any record came does not move "latest" forward (records put while it was
down would be skipped otherwise).

Before a partition is given up (another consumer joined, this one closes, or
its membership was lost) the poller's ``revoking`` runs, on the polling
thread, and its commits still count; records of a partition given up that
were fetched but not returned are dropped (the new holder reads them from
the last commit).

The cluster unreachable, or the topic missing, ``poll`` raises
:class:`~fileproc.errors.StreamError` saying so (and goes on when it is
back); ``close`` waits for the group's answer ``TIMEOUT`` seconds at most.
``status``, ``put`` and ``reset`` work from any process without joining the
group (an AdminClient; a reader that reads the first unprocessed record's
timestamp for IteratorAge): ``put`` writes with ``acks=all``, idempotent, with
Java's partitioner (a key lands where a Java producer would put it);
``reset`` refuses while the group has members.

Lambda's self-managed Kafka event names the cluster by its bootstrap servers
(``eventSource: SelfManagedKafka``, ``bootstrapServers``): so does
:attr:`KafkaSource.event_source_arn`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from fileproc.errors import StreamError, network_reason
from fileproc.streams.sources import PartitionStatus, Put, Record, Revoking

if TYPE_CHECKING:
    from fileproc.mappings import StreamMapping

T = TypeVar("T")
log = logging.getLogger(__name__)
client_log = logging.getLogger(__name__ + ".client")

TIMEOUT = 10.0
"""Seconds a call that waits on the cluster (status, reset, put, a commit) gets before it fails."""

TOPIC_CHECK_EVERY = 2.0
"""Seconds between looks for the topic while this consumer holds no partition (a KIP-848 group waits in silence)."""

RETRY = {KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
         KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION}
"""Answers that mean "ask again in a moment" (a group's coordinator loading, a partition's leader moving)."""

UNREACHABLE = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._TIMED_OUT}
"""librdkafka's codes for a cluster it cannot reach (it keeps trying by itself)."""

TIMESTAMP_TYPES = {TIMESTAMP_CREATE_TIME: "CREATE_TIME", TIMESTAMP_LOG_APPEND_TIME: "LOG_APPEND_TIME"}


class _ClientLog:
    """librdkafka's own lines, at DEBUG but the fatal ones: in an outage it logs every reconnect (20 a second),
    and what matters reaches ``error_cb`` and so the StreamErrors the poller reports."""

    def log(self, level: int, message: str, *args: Any) -> None:
        client_log.log(level if level >= logging.CRITICAL else logging.DEBUG, message, *args)


COMMON: dict[str, Any] = {
    "logger": _ClientLog(),
    "reconnect.backoff.max.ms": 1000,  # back soon after a broker restart (default: up to 10 s)
    "socket.connection.setup.timeout.ms": int(TIMEOUT * 1000),
}


def parse(source: str) -> tuple[str, str]:
    """``kafka://H1:P1,H2:P2/TOPIC`` -> (``"H1:P1,H2:P2"``, ``"TOPIC"``); a host without a port gets 9092."""
    rest = source.removeprefix("kafka://")
    servers, _, topic = rest.partition("/")
    hosts = [h if ":" in h.rsplit("]", 1)[-1] else f"{h}:9092" for h in servers.split(",") if h]
    topic = topic.strip("/")
    if not hosts or not topic:
        raise StreamError(f"{source!r}: use kafka://HOST:PORT[,HOST:PORT...]/TOPIC")
    return ",".join(hosts), topic


class KafkaSource:
    """One mapping's Kafka topic, read as a member of the mapping's consumer group."""

    engine = "kafka"

    def __init__(self, mapping: StreamMapping, consumer: str = "") -> None:
        self.mapping = mapping
        self.bootstrap_servers, self.topic = parse(mapping.source)
        self.event_source_arn = self.bootstrap_servers
        self.group = mapping.consumer_group
        self.client_id = f"fileproc-{mapping.name}" + (f"-{consumer}" if consumer else "")
        self.protocol = "consumer"  # KIP-848; "classic" once a broker refused it
        self.last_error: str | None = None  # the latest the client reported (a status shows it)
        self._consumer: Consumer | None = None
        self._revoking: Revoking | None = None
        self._held: frozenset[int] = frozenset()
        self._topic_checked = 0.0  # when poll last looked whether the topic exists (holding nothing)
        self._unreachable: str | None = None  # why the cluster cannot be reached, reported since the last poll
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None

    @property
    def partitions(self) -> list[str]:
        """The partitions this consumer holds now."""
        return [str(p) for p in sorted(self._held)]

    def _where(self) -> str:
        return f"Kafka at {self.bootstrap_servers} (topic {self.topic!r})"

    def _failed(self, what: str, exc: KafkaException) -> StreamError:
        """A StreamError saying what failed and why, in plain words where the cause is the network."""
        error = _error_of(exc)
        reason = network_reason(exc) or self._unreachable
        if reason is None and error is not None and error.code() in UNREACHABLE:
            reason = self._probe() or error.str()
        detail = f"cannot be reached ({reason})" if reason else error.str() if error is not None else str(exc)
        return StreamError(f"{self._where()}: {what}: {detail}")

    def _probe(self) -> str | None:
        """Why the first bootstrap server refuses a TCP connection, in plain words (librdkafka only says
        "transport failure"); None if it accepts one."""
        host, _, port = self.bootstrap_servers.split(",")[0].rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return None
        except OSError as exc:
            return network_reason(exc) or str(exc)

    def _on_error(self, error: KafkaError) -> None:
        self.last_error = error.str()
        if error.code() in UNREACHABLE:
            self._note_unreachable(error)
        log.debug("%s: %s", self._where(), error.str())

    def _note_unreachable(self, error: KafkaError) -> None:
        # "Connect to ... failed: Connection refused" says more than the "1/1 brokers are down" after it.
        reason = network_reason(KafkaException(error))
        if reason is not None or self._unreachable is None:
            self._unreachable = reason or error.str()

    # -- consuming --------------------------------------------------------------------------

    def start(self, revoking: Revoking) -> None:
        self._revoking = revoking
        self._topic_checked = time.monotonic()
        self._subscribe()

    def _subscribe(self) -> None:
        config: dict[str, Any] = {
            **COMMON,
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group,
            "client.id": self.client_id,
            "group.protocol": self.protocol,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Where a partition without a commit starts (latest and at_timestamp are pinned in _on_assign).
            "auto.offset.reset": "latest" if self.mapping.starting_position == "latest" else "earliest",
            "queued.max.messages.kbytes": 16384,  # the prefetch per partition: a worker's memory stays flat
            "error_cb": self._on_error,
        }
        if self.protocol == "classic":
            config["partition.assignment.strategy"] = "cooperative-sticky"  # incremental, as KIP-848's
        consumer = Consumer(config)
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        self._consumer = consumer

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            partitions = self._starting(consumer, partitions)
        except KafkaException as exc:  # the partitions start at auto.offset.reset instead
            log.warning("%s: the starting position of new partitions not pinned: %s", self._where(), exc)
        consumer.incremental_assign(partitions)
        self._held = self._held | {tp.partition for tp in partitions}
        log.info("%s: %s holds partitions %s", self._where(), self.client_id, self.partitions)

    def _starting(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """``partitions``, those without a commit set to the mapping's start (committed, so it stays put)."""
        position = self.mapping.starting_position
        if position == "trim_horizon" or not partitions:
            return partitions
        committed = consumer.committed([TopicPartition(self.topic, tp.partition) for tp in partitions], TIMEOUT)
        new = [tp.partition for tp in committed if tp.offset < 0]
        if not new:
            return partitions
        starts: dict[int, int] = {}
        if position == "at_timestamp":
            stamp = _millis(self.mapping.starting_timestamp or datetime.fromtimestamp(0, UTC))
            found = consumer.offsets_for_times([TopicPartition(self.topic, p, stamp) for p in new], TIMEOUT)
            starts = {tp.partition: tp.offset for tp in found if tp.offset >= 0}
        for p in new:
            if p not in starts:  # latest, or no record from the timestamp on: the end
                starts[p] = consumer.get_watermark_offsets(TopicPartition(self.topic, p), TIMEOUT, cached=False)[1]
        pinned = [TopicPartition(self.topic, p, offset) for p, offset in starts.items()]
        consumer.commit(offsets=pinned, asynchronous=False)
        return [TopicPartition(self.topic, tp.partition, starts.get(tp.partition, tp.offset)) for tp in partitions]

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._give_up(partitions, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._give_up(partitions, "lost (its commits may fail: what was not committed comes again)")

    def _give_up(self, partitions: list[TopicPartition], how: str) -> None:
        """Let the poller finish and commit the batches of ``partitions`` in flight, then stop holding them."""
        numbers = [tp.partition for tp in partitions]
        log.info("%s: partitions %s of %s %s", self._where(), numbers, self.client_id, how)
        if self._revoking is not None and numbers:
            try:
                self._revoking([str(p) for p in numbers])
            except Exception:  # the rebalance goes on regardless; what was not committed comes again
                log.exception("%s: the poller's revoking failed", self._where())
        self._held = self._held - set(numbers)

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        consumer = self._consumer
        if consumer is None:
            raise StreamError(f"{self._where()}: poll before start")
        try:
            messages = consumer.consume(max_records, 0)  # what is fetched already: no wait
            if not messages:
                first = consumer.poll(timeout)
                messages = [first] if first is not None else []
                if first is not None and max_records > 1:
                    messages += consumer.consume(max_records - 1, 0)
        except KafkaException as exc:
            raise self._failed("cannot read", exc) from exc
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                self._message_error(error)
                continue
            # The partition may have been given up during this call: its new holder reads it again.
            if message.partition() in self._held:
                records.append(self._record(message))
        if records:
            self._unreachable = None
        elif self._unreachable is not None:
            reason, self._unreachable = self._unreachable, None
            raise StreamError(f"{self._where()}: cannot be reached ({reason})")
        elif not self._held and time.monotonic() - self._topic_checked > TOPIC_CHECK_EVERY:
            self._topic_checked = time.monotonic()
            self._check_topic(consumer)
        return records

    def _check_topic(self, consumer: Consumer) -> None:
        """Raise if the topic does not exist (a consumer's metadata request creates no topic)."""
        try:
            topic = consumer.list_topics(self.topic, timeout=TIMEOUT).topics.get(self.topic)
        except KafkaException:
            return  # unreachable: error_cb says so on the next poll
        if topic is None or topic.error is not None:
            raise StreamError(f"{self._where()}: no such topic (create it, or put a record to it)")

    def _message_error(self, error: KafkaError) -> None:
        """A consumer error: fall back to the classic protocol, say what is wrong, or note it (transient)."""
        if error.code() == KafkaError._PARTITION_EOF:
            return
        self.last_error = error.str()
        if error.fatal() or error.code() == KafkaError._FATAL:
            # A consumer that had a fatal error is done for: a new one joins (what was not committed comes again).
            refused = self.protocol == "consumer" and "ConsumerGroupHeartbeat" in error.str()
            if refused:
                log.info("%s: the broker refuses KIP-848 consumer groups (%s): joining with the classic protocol",
                         self._where(), error.str())
                self.protocol = "classic"
            self._renew()
            if not refused:
                raise StreamError(f"{self._where()}: {error.str()} (the consumer joins again)")
            return
        if error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            raise StreamError(f"{self._where()}: no such topic (create it, or put a record to it)")
        if error.code() in UNREACHABLE:
            self._note_unreachable(error)
            return
        log.warning("%s: %s", self._where(), error.str())

    def _renew(self) -> None:
        """Give the partitions up (revoking: its commits will likely fail), close the consumer, join anew."""
        self._give_up([TopicPartition(self.topic, p) for p in sorted(self._held)], "given up (the consumer failed)")
        old, revoking = self._consumer, self._revoking
        self._revoking = None  # called already
        try:
            if old is not None:
                self._leave(old)
        finally:
            self._revoking = revoking
            self._subscribe()

    def _record(self, message: Message) -> Record:
        kind, millis = message.timestamp()
        value = message.value()
        return Record(partition=str(message.partition()), position=str(message.offset()),
                      data=value if value is not None else b"", key=message.key(), timestamp=millis / 1000,
                      headers=_headers(message), timestamp_type=TIMESTAMP_TYPES.get(kind, "NO_TIMESTAMP_TYPE"))

    def commit(self, partition: str, position: str) -> None:
        number = int(partition)
        if number not in self._held:
            # Given up already: its new holder starts from the last commit and runs these again.
            log.warning("%s: commit of partition %s at %s dropped: %s no longer holds it",
                        self._where(), partition, position, self.client_id)
            return
        if self._consumer is None:
            raise StreamError(f"{self._where()}: commit before start")
        try:
            done = self._consumer.commit(offsets=[TopicPartition(self.topic, number, int(position) + 1)],
                                         asynchronous=False)
        except KafkaException as exc:
            raise self._failed(f"cannot commit partition {partition} at {position}", exc) from exc
        for tp in done or ():
            if tp.error is not None:
                raise StreamError(f"{self._where()}: cannot commit partition {partition} at {position}: "
                                  f"{tp.error.str()}")

    def close(self) -> None:
        consumer = self._consumer
        if consumer is not None:
            try:
                self._leave(consumer)
            finally:
                self._consumer, self._held = None, frozenset()
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(TIMEOUT)
        self._admin = None

    def _leave(self, consumer: Consumer) -> None:
        """Give the partitions up (revoking first: its commits still count) and leave the group.

        librdkafka waits for the coordinator's answer up to the session timeout (45 s) when the cluster is
        unreachable: past TIMEOUT this gives up waiting (the group moves the partitions when the session
        ends, from the last commit).
        """
        failed: list[KafkaException] = []

        def leave() -> None:
            try:
                consumer.close()
            except KafkaException as exc:
                failed.append(exc)

        leaving = threading.Thread(target=leave, name=f"kafka-leave-{self.mapping.name}", daemon=True)
        leaving.start()
        leaving.join(TIMEOUT)
        if leaving.is_alive():
            log.warning("%s: %s left without the group's answer (%s)", self._where(), self.client_id,
                        self._unreachable or "no answer in time")
        elif failed:
            raise self._failed("cannot leave the group", failed[0]) from failed[0]

    # -- reading and writing from anywhere --------------------------------------------------

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            config: dict[str, Any] = {**COMMON, "bootstrap.servers": self.bootstrap_servers,
                                      "client.id": self.client_id, "error_cb": self._on_error,
                                      "allow.auto.create.topics": False}  # a status creates nothing
            self._admin = AdminClient(config)
        return self._admin

    def _partition_numbers(self) -> list[int]:
        try:
            metadata = self._admin_client().list_topics(self.topic, timeout=TIMEOUT)
        except KafkaException as exc:
            raise self._failed("cannot read the topic's metadata", exc) from exc
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise StreamError(f"{self._where()}: no such topic"
                              + (f" ({topic.error.str()})" if topic is not None and topic.error else ""))
        return sorted(topic.partitions)

    def _ask(self, what: str, call: Callable[[], T]) -> T:
        """``call()`` (an admin request and its answer), again while the cluster says "in a moment" (a new
        group's coordinator loading, a leader moving), for up to TIMEOUT seconds."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                return call()
            except KafkaException as exc:
                error = _error_of(exc)
                again = error is not None and (error.code() in RETRY or error.retriable()) \
                    and error.code() not in UNREACHABLE
                if not again or time.monotonic() > deadline:
                    raise self._failed(what, exc) from exc
                time.sleep(0.1)

    def _offsets(self, numbers: list[int], spec: OffsetSpec) -> dict[int, int]:
        """Each partition's offset for ``spec`` (earliest, latest, or the first at a time: -1 if none)."""
        def call() -> dict[int, int]:
            asked = {TopicPartition(self.topic, p): spec for p in numbers}
            futures = self._admin_client().list_offsets(asked, request_timeout=TIMEOUT)
            return {tp.partition: future.result().offset for tp, future in futures.items()}

        return self._ask("cannot list offsets", call)

    def _committed(self, numbers: list[int]) -> dict[int, int]:
        """The group's committed offset of each partition (the next to read); absent: none."""
        def call() -> dict[int, int]:
            request = ConsumerGroupTopicPartitions(self.group, [TopicPartition(self.topic, p) for p in numbers])
            futures = self._admin_client().list_consumer_group_offsets([request], request_timeout=TIMEOUT)
            answer = futures[self.group].result()
            return {tp.partition: tp.offset for tp in answer.topic_partitions or () if tp.offset >= 0}

        return self._ask(f"cannot read the offsets of group {self.group!r}", call)

    def status(self) -> list[PartitionStatus]:
        numbers = self._partition_numbers()
        earliest = self._offsets(numbers, OffsetSpec.earliest())
        latest = self._offsets(numbers, OffsetSpec.latest())
        committed = self._committed(numbers)
        starts = dict(committed)
        for p in numbers:  # a group yet to start on a partition would start here
            if p not in starts:
                starts[p] = latest[p] if self.mapping.starting_position != "trim_horizon" else earliest[p]
        if self.mapping.starting_position == "at_timestamp" and len(committed) < len(numbers):
            stamp = _millis(self.mapping.starting_timestamp or datetime.fromtimestamp(0, UTC))
            at = self._offsets([p for p in numbers if p not in committed], OffsetSpec.for_timestamp(stamp))
            starts.update({p: offset for p, offset in at.items() if offset >= 0})
        waiting = {p: max(starts[p], earliest[p]) for p in numbers if latest[p] > max(starts[p], earliest[p])}
        stamps = self._timestamps(waiting)
        out = []
        for p in numbers:
            done = committed.get(p)
            out.append(PartitionStatus(
                partition=str(p),
                committed=str(done - 1) if done else None,
                newest=str(latest[p] - 1) if latest[p] > 0 else None,
                lag=max(0, latest[p] - max(starts[p], earliest[p])),
                oldest_unprocessed=stamps.get(p)))
        return out

    def _timestamps(self, offsets: dict[int, int]) -> dict[int, float]:
        """The timestamp of the record at each partition's offset (IteratorAge); what is not read in 2 s, none."""
        if not offsets:
            return {}
        reader = Consumer({**COMMON, "bootstrap.servers": self.bootstrap_servers,
                           "group.id": f"{self.group}.status",  # a Consumer needs one; it never joins or commits
                           "client.id": self.client_id, "enable.auto.commit": False,
                           "auto.offset.reset": "earliest", "max.partition.fetch.bytes": 65536,
                           "queued.max.messages.kbytes": 1024})
        found: dict[int, float] = {}
        try:
            reader.assign([TopicPartition(self.topic, p, offset) for p, offset in offsets.items()])
            deadline = time.monotonic() + 2.0
            while len(found) < len(offsets) and time.monotonic() < deadline:
                for message in reader.consume(len(offsets), max(0.0, deadline - time.monotonic())):
                    partition = message.partition()
                    if message.error() is None and partition is not None and partition not in found:
                        found[partition] = message.timestamp()[1] / 1000
        except KafkaException as exc:
            log.debug("%s: no record timestamps for the status: %s", self._where(), exc)
        finally:
            reader.close()
        return found

    def read(self, partition: str, first: str, last: str) -> list[Record]:
        """Offsets ``first`` to ``last`` of ``partition``, by a reader of its own (assigned, never in a group,
        never committing); offsets deleted by retention or compaction are missing."""
        try:
            number, start, end = int(partition), int(first), int(last)
        except ValueError:
            raise StreamError(f"{self._where()}: a Kafka partition and its offsets are numbers, not "
                              f"{partition!r} {first!r}..{last!r}") from None
        reader = Consumer({**COMMON, "bootstrap.servers": self.bootstrap_servers,
                           "group.id": f"{self.group}.read",  # a Consumer needs one; it never joins or commits
                           "client.id": self.client_id, "enable.auto.commit": False,
                           "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                           "error_cb": self._on_error})
        try:
            return self._read(reader, number, start, end)
        except KafkaException as exc:
            raise self._failed(f"cannot read partition {partition} at {first}..{last}", exc) from exc
        finally:
            reader.close()

    def _read(self, reader: Consumer, number: int, start: int, end: int) -> list[Record]:
        low, high = reader.get_watermark_offsets(TopicPartition(self.topic, number), TIMEOUT, cached=False)
        start, end = max(start, low), min(end, high - 1)
        if start > end:
            return []
        partition = TopicPartition(self.topic, number, start)
        reader.assign([partition])
        records: list[Record] = []
        deadline = time.monotonic() + TIMEOUT
        # Done when the reader's position passes ``end``: gaps (compaction, transaction markers) give no message.
        while reader.position([partition])[0].offset <= end:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamError(f"{self._where()}: partition {number} not read up to offset {end} in "
                                  f"{TIMEOUT:.0f}s ({len(records)} records read)"
                                  + (f": {self._unreachable}" if self._unreachable else ""))
            for message in reader.consume(min(500, end - start + 1), min(left, 0.5)):
                error = message.error()
                if error is not None:
                    if error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                                        KafkaError._UNKNOWN_PARTITION):
                        raise StreamError(f"{self._where()}: no partition {number}: {error.str()}")
                    continue  # transient (librdkafka retries): the deadline ends it
                offset = message.offset()
                if offset is not None and start <= offset <= end:
                    records.append(self._record(message))
        return records

    def put(self, records: Sequence[tuple[bytes | None, bytes]]) -> list[Put]:
        producer = self._producer
        if producer is None:
            producer = self._producer = Producer({
                **COMMON, "bootstrap.servers": self.bootstrap_servers, "client.id": self.client_id,
                "acks": "all", "enable.idempotence": True,  # durable, and in order across retries
                "partitioner": "murmur2_random",  # the partition of a key is the one Java clients choose
                "linger.ms": 2, "message.timeout.ms": int(TIMEOUT * 1000), "error_cb": self._on_error})
        results: list[Put | KafkaError | None] = [None] * len(records)

        def delivered(index: int) -> Any:
            def report(error: KafkaError | None, message: Message) -> None:
                results[index] = error if error is not None else Put(str(message.partition()), str(message.offset()))
            return report

        for index, (key, data) in enumerate(records):
            while True:
                try:
                    producer.produce(self.topic, value=data, key=key, on_delivery=delivered(index))
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.1)
        left = producer.flush(TIMEOUT + 5)
        failed = [r for r in results if not isinstance(r, Put)]
        if left or failed:
            first = next((r for r in failed if isinstance(r, KafkaError)), None)
            why = first.str() if first is not None else "not acknowledged in time"
            reason = (network_reason(KafkaException(first)) if first is not None else None) or self._unreachable
            detail = f"cannot be reached ({reason}): {why}" if reason else why
            raise StreamError(f"{self._where()}: {len(failed)} of {len(records)} record(s) not written: {detail}")
        return [r for r in results if isinstance(r, Put)]

    def reset(self, to: str | datetime) -> None:
        if isinstance(to, str) and to not in ("trim_horizon", "latest"):
            raise StreamError(f"reset to what? {to!r} (trim_horizon, latest or a time)")
        self._no_members()
        numbers = self._partition_numbers()
        if isinstance(to, datetime):
            offsets = self._offsets(numbers, OffsetSpec.for_timestamp(_millis(to)))
            ends = self._offsets(numbers, OffsetSpec.latest())
            offsets = {p: offset if offset >= 0 else ends[p] for p, offset in offsets.items()}
        else:
            offsets = self._offsets(numbers, OffsetSpec.earliest() if to == "trim_horizon" else OffsetSpec.latest())
        request = ConsumerGroupTopicPartitions(
            self.group, [TopicPartition(self.topic, p, offset) for p, offset in sorted(offsets.items())])
        admin = self._admin_client()
        answer = self._ask(f"cannot move group {self.group!r}", lambda: admin.alter_consumer_group_offsets(
            [request], request_timeout=TIMEOUT)[self.group].result())
        refused = [tp for tp in answer.topic_partitions or () if tp.error is not None]
        if refused:
            raise StreamError(f"{self._where()}: group {self.group!r} not moved: {refused[0].error.str()}")
        log.info("%s: group %s reset to %s: %s", self._where(), self.group, to, offsets)

    def _no_members(self) -> None:
        """Refuse to move a group that has consumers: they would commit over the reset."""
        def call() -> Any:
            futures = self._admin_client().describe_consumer_groups([self.group], request_timeout=TIMEOUT)
            try:
                return futures[self.group].result()
            except KafkaException as exc:
                error = _error_of(exc)
                if error is not None and error.code() == KafkaError.GROUP_ID_NOT_FOUND:
                    return None  # no group yet: nothing consumes
                raise

        described = self._ask(f"cannot describe group {self.group!r}", call)
        if described is not None and described.members:
            who = ", ".join(sorted({m.client_id or m.member_id for m in described.members}))
            raise StreamError(f"{self._where()}: group {self.group!r} has {len(described.members)} active "
                              f"consumer(s) ({who}): stop them (fileproc serve/worker) before a reset")


def _error_of(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def _headers(message: Message) -> tuple[tuple[str, bytes], ...]:
    raw = message.headers() or ()
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((name, value.encode() if isinstance(value, str) else value or b"") for name, value in pairs)


def _millis(when: datetime) -> int:
    """Kafka's timestamp (ms since the epoch) of ``when``; a naive time is UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


__all__ = ["KafkaSource", "parse"]
