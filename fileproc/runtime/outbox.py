"""The outbox: every step message goes to the broker from the state database.

A job's row says whether its current step was sent (``sent_at``) and when it
may be (``send_after``, a retry's backoff). Whoever makes a step due (the
receiver, a worker finishing the previous step) sends it at once after its
commit; the :class:`Relay` that runs in every fileproc process (serve, api,
worker) sends whatever is due and was not: a send that failed, a retry whose
delay has passed, a message the broker lost, a step whose worker died. A
duplicate message is harmless: the job's lease lets one attempt run.
"""

from __future__ import annotations

import logging
import threading

from fileproc.errors import BrokerUnavailable, FileprocError
from fileproc.runtime.app import Step, prepare_sending, send_step, send_steps
from fileproc.service import PeriodicTask, Service
from fileproc.state import JobStatus, Send

log = logging.getLogger(__name__)


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
        while not self._stop.wait(interval):
            try:
                count = relay(self.service)
                self.service.db.checkpoint()
            except FileprocError as exc:
                log.warning("relaying due steps failed (will try again): %s", exc)
                continue
            if count:
                log.info("relayed %d step message(s)", count)

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


__all__ = ["Relay", "relay", "send"]
