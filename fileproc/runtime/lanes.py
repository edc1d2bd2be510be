"""Queues that appear while a worker runs: those of functions deployed after it started.

Each deployed function has a queue of its own (``fn.NAME``), so a worker
serving them consumes more queues as functions are deployed. Neither kombu's
Redis transport nor RabbitMQ consumes queues by pattern, so a thread of the
worker's main process asks every ``worker.queue_refresh`` seconds which
queues it should consume now, and hands each new one to Celery's consumer in
the consumer's own event loop (``Consumer.add_task_queue``: what Celery's
``add_consumer`` control command does). From then on Celery consumes it as
one of its own (a reconnection consumes it again), on Redis and RabbitMQ
alike.

Fair sharing needs nothing more: a worker holds at most as many messages as
it can start (``worker_prefetch_multiplier = 1`` with ``acks_late``: a
message is held while its step runs), and when a slot frees it takes the
next message queue by queue in turn (kombu's Redis transport puts the queue
it last took from at the end of its ``BRPOP``; RabbitMQ delivers from each
queue a channel consumes), so a burst of one function waits its turn.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from fileproc.errors import FileprocError

log = logging.getLogger(__name__)


class Lanes:
    """Adds to a running worker's consumer each queue ``find`` names that it does not consume yet.

    ``find`` runs on a thread of its own (it may ask the database: a slow
    answer never holds up the consumer's event loop), every ``interval``
    seconds, from :meth:`start` until :meth:`stop`.
    """

    def __init__(self, find: Callable[[], Iterable[str]], interval: float) -> None:
        self.find = find
        self.interval = interval
        self._taken: set[str] = set()
        self._stop = threading.Event()
        self._failing = False

    def start(self, consumer: Any, consumed: Iterable[str]) -> None:
        """Follow ``find`` for ``consumer`` (Celery's), which consumes ``consumed`` already."""
        self._taken = set(consumed)
        threading.Thread(target=self._run, args=(consumer,), name="fileproc-lanes", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def consumed(self) -> list[str]:
        """The queues the worker consumes now (those it started with, and those added since)."""
        return sorted(self._taken)

    def new(self) -> list[str]:
        """The queues ``find`` names that are not consumed yet (from now on they count as consumed)."""
        found = sorted(set(self.find()) - self._taken)
        self._taken.update(found)
        return found

    def _run(self, consumer: Any) -> None:
        while not self._stop.wait(self.interval):
            try:
                found = self.new()
            except FileprocError as exc:  # the database is down: the queues consumed already go on
                if not self._failing:
                    log.warning("cannot look for new functions' queues (will try again): %s", exc)
                self._failing = True
                continue
            self._failing = False
            for queue in found:  # Celery logs "Started consuming from fn.NAME"
                consumer.call_soon(consumer.add_task_queue, queue)  # in the consumer's event loop


__all__ = ["Lanes"]
