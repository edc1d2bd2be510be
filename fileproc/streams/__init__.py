"""Streams: Lambda's event source mappings on Kafka, Redis Streams and NATS JetStream.

A ``[[streams]]`` mapping (:class:`fileproc.mappings.StreamMapping`) is
consumed by a poller (:mod:`.poller`) in ``fileproc serve`` and ``fileproc
worker``: records come from the engine (:mod:`.sources`), are filtered
(:mod:`.filtering`), batched per partition, turned into the event Lambda
gives (:mod:`.events`), run through the function now
(:func:`fileproc.runtime.direct.invoke_event`), and committed only after the
batch succeeded or its failure was recorded (:mod:`.failures`).
"""
