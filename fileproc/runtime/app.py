"""The Celery application: broker settings and sending a step to its queue.

Delivery is at-least-once: messages are acknowledged only after the step ran
(``acks_late``). The broker is not what recovers lost work, though: the state
database is (a step whose worker died is sent again by the outbox once its
lease runs out, within seconds), so nothing waits on the broker's visibility
timeout. Running a step twice at once is made impossible by the job's lease
in the state database, not by the broker.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from kombu.exceptions import KombuError, OperationalError

from fileproc.config import Settings
from fileproc.errors import BrokerUnavailable
from fileproc.runtime import fastpath
from fileproc.runtime.fastpath import Step
from fileproc.runtime.lanes import Lanes
from fileproc.state.heartbeats import Heartbeat

celery_app = Celery("fileproc")
celery_app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=5,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_default_queue="fileproc",
)

RUN_STEP = "fileproc.run_step"


def broker_url(settings: Settings) -> str:
    """The configured broker, or the embedded Redis's socket under the data dir (with its password)."""
    url = settings.broker.url.get_secret_value()
    if url:
        return url
    from fileproc.broker import stored_password

    secret = stored_password(settings.data_dir / "broker")  # (none yet: serve has never run, nothing answers)
    return f"redis+socket://:{secret}@{embedded_socket(settings)}" if secret else f"redis+socket://{embedded_socket(settings)}"


def embedded_socket(settings: Settings) -> str:
    """The embedded broker's socket; in /tmp when the data dir's path is too long for one."""
    path = str((settings.data_dir / "broker" / "redis.sock").resolve())
    if len(path) < 100:  # AF_UNIX paths are limited to 108 bytes
        return path
    digest = hashlib.sha1(path.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"fileproc-{digest}.sock")


def configure(settings: Settings) -> Celery:
    visibility = settings.broker.visibility_timeout
    url = broker_url(settings)
    if celery_app.conf.broker_url and celery_app.conf.broker_url != url:
        _forget_connections()  # made for the other broker (several services in one process: tests)
    celery_app.conf.update(
        broker_url=url,
        broker_transport_options={
            "visibility_timeout": visibility,
            # kombu sweeps for abandoned messages every interval x throttle seconds
            # (100 s by default); keep the sweep well inside the visibility timeout.
            "unacked_restore_interval": max(1, min(10, visibility // 3)),
            "unacked_restore_throttle": 1,
            # kombu's restore lock: a partitioned worker's late SET NX must not hold it for
            # the default 300 s (recovery does not depend on it, but redelivery would stall).
            "unacked_mutex_expire": max(1, min(15, visibility // 3)),
            "health_check_interval": 10,
            "socket_keepalive": True,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
    )
    fastpath.enable(settings.runtime.redis_fast_path)
    return celery_app


def run_worker(queues: str, concurrency: int, log_level: str, *, on_ready: Callable[[], None] | None = None,
               lanes: Lanes | None = None, heartbeat: Heartbeat | None = None, **options: Any) -> int:
    """Run Celery's worker on ``queues`` (comma-separated) in this process until it stops; its exit code.

    Without Celery's command line (its imports cost a third of a second), quiet
    (no banner), without gossip, mingle or heartbeat; ``options`` are more of
    Celery's worker options (``pool_cls="solo"``). ``on_ready`` runs in this
    process once the worker is ready (its pool's processes forked already: a
    thread started then is in none of them); ``lanes`` then adds the queues
    that appear later (functions deployed since). The worker holds at most
    ``concurrency`` messages, each while its step runs, and takes its queues
    in turn.
    """
    if on_ready is not None:
        worker_ready.connect(lambda **_: on_ready(), weak=False)
    consumed = [name for name in queues.split(",") if name]
    if lanes is not None:
        worker_ready.connect(lambda sender, **_: lanes.start(sender, consumed), weak=False)
        worker_shutdown.connect(lambda **_: lanes.stop(), weak=False)
    hostname = f"fileproc-{os.getpid()}@{socket.gethostname()}"
    if heartbeat is not None:
        consuming = lanes.consumed if lanes is not None else lambda: consumed
        worker_ready.connect(lambda **_: heartbeat.start(hostname, consuming, concurrency), weak=False)
        worker_shutdown.connect(lambda **_: heartbeat.stop(), weak=False)
    worker = celery_app.Worker(
        queues=queues, concurrency=concurrency, hostname=hostname,
        loglevel=log_level.upper(), without_gossip=True, without_mingle=True, without_heartbeat=True, quiet=True,
        **options)
    worker.start()
    return int(worker.exitcode or 0)


def _forget_connections() -> None:
    # Celery takes its connection and producer pools once, from the broker URL it had then,
    # and has no public way to let go of them (close() also unregisters the app). The pools
    # stay in kombu's registry, by broker, open: a later service of the same broker takes them.
    celery_app._pool = None
    amqp = celery_app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


_declared: set[str] = set()
"""Queues this process has declared: Celery would declare the queue again before every
message (the costliest part of sending one); once is enough (they are durable, and on
Redis messages go to the queue's list by name)."""


def _declare(queue: str) -> list[Any] | None:
    return [] if queue in _declared else None  # None: Celery declares it


def send_step(job_id: int, step_index: int, queue: str) -> None:
    """Put one step of one job on its function's queue, retrying a blip. Raises BrokerUnavailable."""
    try:
        celery_app.send_task(
            RUN_STEP, args=(job_id, step_index), queue=queue, argsrepr=f"({job_id}, {step_index})",
            declare=_declare(queue),
            retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except (OperationalError, KombuError, OSError) as exc:
        raise BrokerUnavailable(f"cannot reach the broker to queue job {job_id}: {type(exc).__name__}") from exc
    _declared.add(queue)


def send_steps(steps: list[Step]) -> None:
    """Put many steps on their queues at once: on Redis one pipeline, one round trip.

    On Redis the messages are written by :mod:`~fileproc.runtime.fastpath`
    (unless ``runtime.redis_fast_path`` is off), elsewhere by Celery. All or
    nothing as far as the caller knows: raises BrokerUnavailable if the
    batch did not go (some of its messages may have; a duplicate is harmless).
    """
    from redis.exceptions import RedisError

    try:
        with celery_app.producer_or_acquire() as producer:
            if fastpath.applies(producer.channel):
                fastpath.push(celery_app, RUN_STEP, producer.channel, steps)
                return
            with producer.batch():
                for job_id, step_index, queue in steps:
                    celery_app.send_task(RUN_STEP, args=(job_id, step_index), queue=queue, producer=producer,
                                         argsrepr=f"({job_id}, {step_index})", declare=_declare(queue))
    except (OperationalError, KombuError, OSError, RedisError) as exc:
        raise BrokerUnavailable(f"cannot reach the broker to queue {len(steps)} step(s): {type(exc).__name__}") from exc
    _declared.update(queue for _, _, queue in steps)


def prepare_sending() -> None:
    """Do now what the first send would (about a quarter of a second of CPU): import the broker's
    client library and build run_step's message template (for the fast path). Connects to nothing."""
    connection = celery_app.connection_for_write()
    try:
        _ = connection.transport  # imports kombu's transport and its client (redis, amqp)
    finally:
        connection.release()
    if fastpath.enabled():
        fastpath.messages(celery_app, RUN_STEP)
