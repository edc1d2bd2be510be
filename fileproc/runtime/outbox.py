"""The outbox: every step message goes to the broker from the state database.

A job's row says whether its current step was sent (``sent_at``) and when it
may be (``send_after``, a retry's backoff). Whoever makes a step due (the
receiver, a worker finishing the previous step) sends it at once after its
commit; the :class:`Relay` that runs in every fileproc process (serve, api,
worker) sends whatever is due and was not: a send that failed, a retry whose
delay has passed, a message the broker lost, a step whose worker died. A
duplicate message is harmless: the job's lease lets one attempt run.

On Redis the relay also watches the broker (:class:`BrokerWatch`), so what
the broker lost is sent again within seconds rather than after
``runtime.resend_after``: a message a worker took and died holding before
its step started, and everything sent before the broker restarted empty. And
it leaves a witness there for the lease keepers (:data:`DATABASE_SEEN`):
whether any fileproc process reached the state database in the last few
seconds, which tells a worker that cannot renew its leases whether the
database is down for everyone (nobody can take its steps over: they go on) or
only out of its own reach (they stop, see :mod:`fileproc.runtime.leases`).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from fileproc.errors import BrokerUnavailable, FileprocError
from fileproc.runtime.app import RUN_STEP, Step, celery_app, prepare_sending, send_step, send_steps
from fileproc.service import PeriodicTask, Service
from fileproc.state import DatabaseUnavailable, JobStatus, Send, steps

log = logging.getLogger(__name__)

T = TypeVar("T")

DATABASE_SEEN = "fileproc:database-seen"
"""Broker key each relay sets after every pass that reached the state database, expiring soon after."""
RESTART_SLACK = 3.0
"""Seconds before the broker's restart (as its uptime tells it) taken for after it, to miss nothing."""
BROKER_MARK = "fileproc:broker-mark"
"""Broker key set once: gone means the broker lost what it held (restarted without its data, or flushed)."""


def send(service: Service, sends: list[Send]) -> list[int]:
    """Hand each step to its queue; the ids of jobs whose message did not go (kept due).

    All in one batch (one round trip to Redis); if the batch fails, one by
    one with retries, so a blip costs no more than the messages it hit.
    """
    steps: list[Step] = []
    for item in sends:
        pipeline = service.pipeline(item.pipeline)
        if pipeline is None or item.step_index >= len(pipeline.steps):
            service.db.end_job(item.job_id, JobStatus.FAILED, f"pipeline {item.pipeline!r} is no longer configured")
            continue
        steps.append((item.job_id, item.step_index, service.queue_for(pipeline.steps[item.step_index])))
    if not steps:
        return []
    try:
        send_steps(steps)
        return []
    except BrokerUnavailable as exc:
        log.info("sending %d step(s) one by one: %s", len(steps), exc)
    failed: list[int] = []
    for index, step in enumerate(steps):
        try:
            send_step(*step)
        except BrokerUnavailable as exc:
            log.warning("%d step(s) stay queued until the broker is back: %s", len(steps) - index, exc)
            failed.extend(job_id for job_id, _, _ in steps[index:])
            break
    if failed:
        service.db.unsend(failed)
    return failed


def relay(service: Service) -> int:
    """Send every step that is due; how many went."""
    sent = 0
    while True:
        due = service.db.take_sends(service.settings.runtime.resend_after)
        if not due:
            return sent
        failed = send(service, due)
        sent += len(due) - len(failed)
        if failed or len(due) < 500:
            return sent


class Relay:
    """Runs :func:`relay` every ``runtime.relay_interval`` seconds in a daemon thread.

    Each of the service's periodic tasks (``service.periodic``: the deployed
    functions' destination records due again, say) runs as often on a thread
    of its own, so a slow one never holds up step messages.

    On SQLite it also checkpoints the write-ahead log then, so that no commit
    has to (see ``Database.checkpoint``).
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name="fileproc-relay", daemon=True)]
        self._threads += [threading.Thread(target=self._periodic, args=(task,), name=f"fileproc-{task.name}",
                                           daemon=True) for task in service.periodic]

    def start(self) -> Relay:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            prepare_sending()  # not in the first upload's send
        except Exception as exc:  # the first send reports what is wrong
            log.debug("cannot prepare the broker's client yet: %s", exc)
        interval = self.service.settings.runtime.relay_interval
        watch = BrokerWatch(self.service)
        unreachable_since: float | None = None  # (monotonic) the database stopped answering this relay
        while not self._stop.wait(interval):
            try:
                if unreachable_since is not None:
                    spare_leases(self.service, time.monotonic() - unreachable_since + interval)
                count = relay(self.service)
                self.service.db.checkpoint()
            except DatabaseUnavailable as exc:
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                log.warning("relaying due steps failed (will try again): %s", exc)
                continue
            except FileprocError as exc:
                log.warning("relaying due steps failed (will try again): %s", exc)
                continue
            unreachable_since = None
            if count:
                log.info("relayed %d step message(s)", count)
            try:
                count = watch.look()
            except Exception as exc:  # the relay itself must go on, whatever the broker's client does
                log.warning("watching the broker failed (will try again): %s: %s", type(exc).__name__, exc)
                continue
            if count:
                log.info("sent %d step message(s) again that the broker lost", count)

    def _periodic(self, task: PeriodicTask) -> None:
        interval = self.service.settings.runtime.relay_interval
        while not self._stop.wait(interval):
            try:
                count = task.run(self.service)
            except FileprocError as exc:
                log.warning("%s failed (will try again): %s", task.name, exc)
                continue
            if count:
                log.info(task.did, count)


def spare_leases(service: Service, outage: float) -> int:
    """The database answers again after ``outage`` seconds: renew the leases that ran out meanwhile.

    Their holders could not renew them, and nobody could take their steps
    over: a holder still running its step keeps it (it renews from now on),
    instead of the step starting over elsewhere. Done before anything is
    relayed, so no step whose lease ran out in the outage is sent again first.
    """
    lease = service.settings.runtime.lease_seconds
    with service.db.session() as s:
        at = service.db.now(s)
        spared = steps.spare_leases(s, at, lease, at - timedelta(seconds=outage + lease))
    if spared:
        log.warning("the state database answers again after %.0f s: %d running step(s) keep their lease",
                    outage, spared)
    return spared


# --- watching the broker (Redis) -------------------------------------------------------


def _broker_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import KombuError, OperationalError
    from redis.exceptions import RedisError

    return (KombuError, OperationalError, RedisError, OSError)


@contextmanager
def _redis() -> Iterator[tuple[Any, Any] | None]:
    """(kombu's Redis channel, a client of it), or None when the broker is not Redis."""
    from kombu.transport.redis import Channel as RedisChannel

    with celery_app.producer_or_acquire() as producer:
        channel = producer.channel
        if not isinstance(channel, RedisChannel):
            yield None
            return
        with channel.conn_or_acquire() as client:
            yield channel, client


def _on_redis(what: str, use: Callable[[Any, Any], T]) -> T | None:
    """``use(channel, client)`` on the Redis broker; None if the broker is not Redis or did not answer."""
    try:
        with _redis() as found:
            return None if found is None else use(*found)
    except _broker_errors() as exc:
        log.debug("cannot %s: %s", what, exc)
        return None


def database_down_everywhere() -> bool:
    """Whether the broker answers and says no fileproc process reached the state database lately.

    The lease keepers' witness (:data:`DATABASE_SEEN`): while it holds,
    nobody can take a step over, so a step whose lease cannot be renewed
    goes on. False when the broker does not answer (this host may be cut
    off from everything: stop, as if others could take over).
    """
    return bool(_on_redis("ask the broker whether the database was seen",
                          lambda _, client: not client.exists(DATABASE_SEEN)))


def _run_step_of(payload: bytes | str) -> tuple[int, int] | None:
    """(job id, step index) of an unacknowledged run_step message as kombu keeps it, else None."""
    try:
        message = json.loads(payload)[0]
        if message.get("headers", {}).get("task") != RUN_STEP:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0]), int(args[1])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class BrokerWatch:
    """After each relay pass: what did the broker lose since? (Redis only; one process of many may act.)

    - A message a worker took and did not acknowledge (kombu keeps it in its
      ``unacked`` hash) whose step is still waiting a lease later: the
      worker died between taking it and starting its step (with ``acks_late``
      each of its processes holds one). It goes back to the front of its
      queue now, as kombu itself would after ``broker.visibility_timeout``
      (a duplicate, were the holder alive after all, is dropped by the claim
      in the step's first transaction). Messages of steps that started are
      the leases' business.
    - :data:`BROKER_MARK` gone: the broker restarted without its data (or was
      flushed). Every step sent before it started and not started since is
      sent again now. The process that sets the mark again does it, once.

    It also sets :data:`DATABASE_SEEN` for the lease keepers.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        runtime = service.settings.runtime
        self.held_too_long = runtime.lease_seconds
        # Outlives the gaps between passes (of any process), not a database outage of 80 % of a lease.
        self.seen_for_ms = int((2 * runtime.relay_interval + 1) * 1000)
        self._started: set[bytes] = set()  # unacked messages known to be of steps that started

    def look(self) -> int:
        """Steps sent again because the broker lost them."""
        found = _on_redis("watch the broker", self._look)
        return found or 0

    def _look(self, channel: Any, client: Any) -> int:
        pipe = client.pipeline(transaction=False)
        pipe.set(DATABASE_SEEN, "1", px=self.seen_for_ms)
        pipe.set(BROKER_MARK, str(time.time()), nx=True)
        pipe.zrange(channel.unacked_index_key, "-inf", time.time() - self.held_too_long, byscore=True)
        _, emptied, held = pipe.execute()
        sent = self._restart(client) if emptied else 0
        return sent + self._restore(channel, client, held)

    def _restart(self, client: Any) -> int:
        # Whole seconds, and not to the moment the server took its first command: a step sent just
        # after the restart may be sent twice (harmless), none sent just before it is missed.
        uptime = float(client.info("server").get("uptime_in_seconds", 0)) - RESTART_SLACK
        with self.service.db.session() as s:
            before = self.service.db.now(s) - timedelta(seconds=uptime)
            count = steps.unsend_sent_before(s, before)
        if count:
            log.warning("the broker lost its messages (restarted without its data?): %d waiting step(s) are "
                        "sent again", count)
            count = relay(self.service)
        return count

    def _restore(self, channel: Any, client: Any, held: list[bytes]) -> int:
        self._started &= set(held)
        unknown = [tag for tag in held if tag not in self._started]
        if not unknown:
            return 0
        steps_of = {tag: _run_step_of(payload) for tag, payload in zip(
            unknown, client.hmget(channel.unacked_key, unknown), strict=True) if payload is not None}
        with self.service.db.reading() as s:
            waiting = steps.waiting(s, self.service.db.now(s), [step for step in steps_of.values() if step])
        restored = 0
        for tag, step in steps_of.items():
            if step is None or step not in waiting:
                self._started.add(tag)
                continue
            log.warning("job %s: step %d was taken by a worker that never started it (it died?); sent again",
                        *step)
            channel.qos.restore_by_tag(tag, client)
            restored += 1
        return restored


__all__ = ["BROKER_MARK", "DATABASE_SEEN", "BrokerWatch", "Relay", "database_down_everywhere", "relay", "send",
           "spare_leases"]
