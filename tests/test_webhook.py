"""The webhook's request logic without HTTP: :func:`fileproc.intake.webhook.receive` on a real store and state.

Real parts: SQLite and local storage in a temp dir, the real committer's
threads; no app, no client, no token. The HTTP side (tokens, status codes,
limits) is tests/test_api.py's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fileproc.intake.notifications import BadNotification, TooManyRecords
from fileproc.intake.webhook import Committer, Receipt, receive
from fileproc.service import Service
from tests.test_api import body, make_service, record


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return make_service(tmp_path, max_records=5)


@pytest.fixture
def committer(service: Service) -> Iterator[Committer]:
    running = Committer(service)
    running.start()
    yield running
    running.stop()


def received(service: Service, committer: Committer, data: bytes, **options: Any) -> Receipt:
    return asyncio.run(receive(service, data, committer, **options))


def test_matched_events_are_committed_before_it_returns_and_the_rest_only_counted(
        service: Service, committer: Committer) -> None:
    receipt = received(service, committer, body(record("a.jpg"), record("notes.txt"), record("b.jpg")))
    assert receipt.recorded == 3 and len(receipt.jobs) == 2 and receipt.rejected == [] and not receipt.test
    assert sorted(job.key for job in service.db.list_jobs()) == ["a.jpg", "b.jpg"]
    counts = committer.counters.to_dict()
    assert (counts["requests"], counts["received"], counts["unmatched"], counts["recorded"]) == (1, 3, 1, 2)


def test_the_same_notification_twice_finds_the_same_jobs(service: Service, committer: Committer) -> None:
    first = received(service, committer, body(record("a.jpg")))
    assert received(service, committer, body(record("a.jpg"))).jobs == first.jobs
    assert len(service.db.list_jobs()) == 1


def test_an_incomplete_event_is_completed_from_the_object_and_a_gone_one_dropped(
        service: Service, committer: Committer) -> None:
    info = service.storage.put("uploads", "big.jpg", b"\xff\xd8" + b"x" * 500)
    receipt = received(service, committer, body(record("big.jpg", size=0, eTag=info.etag), record("gone.jpg", size=0)))
    (job_id,) = receipt.jobs
    job = service.db.get_job(job_id)
    assert job is not None and job.key == "big.jpg" and job.event["size"] == info.size
    assert committer.counters.to_dict()["dropped"] == 1


def test_raw_keys_are_taken_as_they_are(service: Service, committer: Committer) -> None:
    received(service, committer, body(record("a+b%20c.jpg")), raw_keys=True)
    received(service, committer, body(record("d+e%20f.jpg")))
    assert sorted(job.key for job in service.db.list_jobs()) == ["a+b%20c.jpg", "d e f.jpg"]


def test_a_bad_key_is_refused_with_its_reason_and_the_rest_recorded(service: Service, committer: Committer) -> None:
    receipt = received(service, committer, body(record("good.jpg"), record("a/../x.jpg")), raw_keys=True)
    assert len(receipt.jobs) == 1 and receipt.rejected[0].startswith("Records[1]:")
    assert committer.counters.to_dict()["rejected"] == 1


def test_a_test_probe_records_nothing(service: Service, committer: Committer) -> None:
    probe = json.dumps({"Event": "s3:TestEvent", "Service": "Amazon S3"}).encode()
    assert received(service, committer, probe) == Receipt(test=True)
    assert service.db.list_jobs() == []


@pytest.mark.parametrize(("data", "refused"), [
    (b"{nope", BadNotification),
    (body(*(record(f"p{i}.jpg") for i in range(6))), TooManyRecords),  # max_records is 5
])
def test_a_body_that_is_refused_records_nothing(service: Service, committer: Committer, data: bytes,
                                                refused: type[Exception]) -> None:
    with pytest.raises(refused):
        received(service, committer, data)
    assert service.db.list_jobs() == []


def test_a_large_body_is_parsed_off_the_event_loop_with_the_same_result(service: Service,
                                                                       committer: Committer) -> None:
    padding = {"padding": "x" * 70_000}  # over PARSE_INLINE_BYTES
    data = json.dumps({"Records": [record("a.jpg")], **padding}).encode()
    assert len(received(service, committer, data).jobs) == 1
