"""The Redis fast path: run_step's messages pushed straight onto their queues' lists, as Celery would write them.

Building a message through ``send_task`` and kombu's publish costs about 270 µs
of CPU, as much as receiving the notification that made it. On Redis a
message is one JSON document pushed onto the queue's list, the same for
every step but for its ids and arguments: it is built here from Celery's own
headers for run_step (taken once per process) in about 20 µs.
``tests/test_step_messages.py`` checks that it is the message ``send_task``
writes, field by field, so a change in Celery or kombu fails there first.

It applies on kombu's Redis transport without a key prefix, and only while
``runtime.redis_fast_path`` is on (the default): turned off, every step goes
through Celery's own ``send_task`` (:func:`fileproc.runtime.app.send_steps`).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any

from celery import Celery

Step = tuple[int, int, str]
"""One step to send: (job id, step index, queue)."""

_enabled = True


def enable(on: bool) -> None:
    """Turn the fast path on or off in this process (``runtime.redis_fast_path``, applied by ``configure``)."""
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


def applies(channel: Any) -> bool:
    """Whether steps sent on ``channel`` go the fast way: the fast path is on, and ``channel`` is kombu's
    Redis channel with plain list names (no key prefix)."""
    from kombu.transport.redis import Channel as RedisChannel

    return _enabled and isinstance(channel, RedisChannel) and not getattr(channel, "global_keyprefix", "")


def push(app: Celery, task: str, channel: Any, steps: list[Step]) -> None:
    """Push one ``task`` message per step onto its queue's list, in one round trip (a pipeline)."""
    encode = messages(app, task).encode
    with channel.conn_or_acquire() as client:
        pipe = client.pipeline(transaction=False)
        for job_id, step_index, queue in steps:
            pipe.lpush(queue, encode(job_id, step_index, queue))  # priority 0: the queue's own list
        pipe.execute()


class RunStepMessages:
    """A task's messages as Celery (protocol 2) and kombu's Redis transport write them, for (job, step) arguments."""

    def __init__(self, app: Celery, task: str) -> None:
        self.app = app
        template = app.amqp.as_task_v2("-", task, args=(0, 0), kwargs={}, ignore_result=None)
        self.headers: dict[str, Any] = dict(template.headers)
        self.embed: dict[str, Any] = dict(template.body[2])

    def encode(self, job_id: int, step_index: int, queue: str) -> str:
        task_id = str(uuid.uuid4())
        argsrepr = f"({job_id}, {step_index})"
        body = json.dumps([[job_id, step_index], {}, self.embed]).encode()
        return json.dumps({
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {**self.headers, "id": task_id, "root_id": task_id, "argsrepr": argsrepr},
            "properties": {
                # Per sending thread, as Celery's own (the template may be built in another thread).
                "correlation_id": task_id, "reply_to": self.app.thread_oid, "argsrepr": argsrepr, "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
            },
        })


_by_process: dict[int, RunStepMessages] = {}


def messages(app: Celery, task: str) -> RunStepMessages:
    """The message template of ``task``, built once per process (:func:`prepare` builds it ahead)."""
    # Per process: the headers name the sending process (origin), and forked workers send too.
    pid = os.getpid()
    found = _by_process.get(pid)
    if found is None:
        _by_process.clear()
        found = _by_process[pid] = RunStepMessages(app, task)
    return found


def forget() -> None:
    """Drop the template (it is built again on the next send)."""
    _by_process.clear()


__all__ = ["RunStepMessages", "Step", "applies", "enable", "enabled", "forget", "messages", "push"]
