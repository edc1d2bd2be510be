"""The engine of a mapping, by its ``source``: one import, so the others' client libraries load only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fileproc.mappings import StreamMapping
    from fileproc.streams.sources import StreamSource


def open_source(mapping: StreamMapping, *, embedded_url: str | None = None, consumer: str = "") -> StreamSource:
    """The source of ``mapping``: ``embedded_url`` is fileproc's own Redis (where embedded:NAME streams live)."""
    engine = mapping.engine
    if mapping.source.startswith(("redis-list:", "rediss-list:")):  # a list, not a stream: a queue others fill
        from fileproc.streams.redis_lists import RedisListSource

        return RedisListSource(mapping, consumer=consumer)
    if engine in ("redis", "embedded"):
        from fileproc.streams.redis_streams import RedisStreamSource

        return RedisStreamSource(mapping, embedded_url=embedded_url, consumer=consumer)
    if engine == "kafka":
        from fileproc.streams.kafka import KafkaSource

        return KafkaSource(mapping, consumer=consumer)
    if engine == "amqp":
        from fileproc.streams.amqp import AmqpSource

        return AmqpSource(mapping, consumer=consumer)
    from fileproc.streams.nats import NatsSource

    return NatsSource(mapping, consumer=consumer)


__all__ = ["open_source"]
