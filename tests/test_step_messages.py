"""The step messages fileproc pushes onto Redis are the ones Celery itself would write.

On Redis, ``send_steps`` builds run_step's messages itself (a twelfth of
Celery's CPU per message: fileproc/runtime/fastpath.py) instead of going
through ``send_task``. These tests send the same step both ways to a real
Redis and compare what lands in the queue's list, field by field, so a change
of format in Celery or kombu shows here; a real worker then runs a step sent
the fast way, and one sent with ``runtime.redis_fast_path`` off.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fileproc.config import load_settings
from fileproc.runtime import app, fastpath
from tests.procs import Process, jobs, wait_for, write_config

pytestmark = pytest.mark.services

IDS = {("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id"), ("properties", "delivery_tag")}


def decoded(raw: bytes) -> dict[str, Any]:
    """The message with its body decoded and its per-message ids set aside."""
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    for section, name in IDS:
        uuid.UUID(message[section].pop(name))  # each is a fresh UUID
    return message


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    app.configure(load_settings(None, env={"FILEPROC_BROKER_URL": redis_url}))
    client = redis.Redis.from_url(redis_url)
    client.delete("conformance")
    yield client
    app.configure(load_settings(None, env={"FILEPROC_BROKER_URL": redis_url}))  # the fast path on again


def test_a_step_sent_by_fileproc_is_the_message_celery_writes(broker: redis.Redis) -> None:
    fastpath.forget()
    builder = threading.Thread(target=app.prepare_sending)  # as each relay does when it starts: another thread
    builder.start()
    builder.join()
    app.celery_app.send_task(app.RUN_STEP, args=(5, 1), queue="conformance", argsrepr="(5, 1)")
    app.send_steps([(5, 1, "conformance")])
    celerys, ours = (decoded(raw) for raw in reversed(broker.lrange("conformance", 0, -1)))  # LPUSH: newest first
    assert ours == celerys
    assert ours["body"][0] == [5, 1] and ours["headers"]["task"] == "fileproc.run_step"


def test_each_message_has_ids_of_its_own(broker: redis.Redis) -> None:
    app.send_steps([(1, 0, "conformance"), (2, 0, "conformance")])
    first, second = (json.loads(raw) for raw in broker.lrange("conformance", 0, -1))
    for message in (first, second):
        assert message["headers"]["id"] == message["headers"]["root_id"] == message["properties"]["correlation_id"]
    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
    assert [json.loads(base64.b64decode(m["body"]))[0] for m in (second, first)] == [[1, 0], [2, 0]]


def test_with_the_fast_path_off_steps_go_through_celerys_own_send(
        broker: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(None, env={"FILEPROC_BROKER_URL": redis_url, "FILEPROC_RUNTIME_REDIS_FAST_PATH": "false"})
    assert settings.runtime.redis_fast_path is False
    app.configure(settings)

    def fast_way(*args: Any) -> None:
        raise AssertionError("the fast path is off")

    monkeypatch.setattr(fastpath, "push", fast_way)
    app.prepare_sending()
    app.celery_app.send_task(app.RUN_STEP, args=(5, 1), queue="conformance", argsrepr="(5, 1)")
    app.send_steps([(5, 1, "conformance"), (6, 0, "conformance")])
    celerys, *sent = (decoded(raw) for raw in reversed(broker.lrange("conformance", 0, -1)))  # LPUSH: newest first
    assert sent[0] == celerys
    assert [message["body"][0] for message in sent] == [[5, 1], [6, 0]]
    assert sent[1]["headers"]["argsrepr"] == "(6, 0)" and sent[1]["headers"]["task"] == "fileproc.run_step"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast path", "celery's send"])
def test_a_worker_runs_a_step_sent_either_way(tmp_path: Path, redis_url: str, fast_path: bool) -> None:
    redis.Redis.from_url(redis_url).flushall()
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "broker": {"url": redis_url}, "runtime": {"redis_fast_path": fast_path},
        "pipelines": [{"name": "sizes", "match": {"bucket": "texts"}, "steps": [{"function": "thumbnail"}],
                       "output": {"bucket": "out"}}],
    })
    from tests.procs import fileproc

    source = tmp_path / "not-an-image.txt"
    source.write_text("the worker takes the message, runs the step, and records why it failed")
    fileproc(config, "put", str(source), "texts/not-an-image.txt")  # sent by send_steps
    worker = Process(config, ["worker"], tmp_path / "worker.log")
    try:
        (job,) = wait_for(lambda: [j for j in jobs(config) if j["status"] in ("failed", "succeeded")], 60,
                          "the worker to run the step", worker)
    finally:
        worker.stop()
    assert job["status"] == "failed" and "image" in (job["error"] or "").lower(), job
