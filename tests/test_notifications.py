"""Notification bodies from each store become the same ObjectEvents."""

from __future__ import annotations

import json

import pytest

from fileproc.intake.notifications import BadNotification, TooManyRecords, parse_body


def aws_body(key: str, **obj: object) -> dict[str, object]:
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-11-26T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"},
               "object": {"key": key, "size": 42, "eTag": "0123abcd", "sequencer": "0055AED6DCD90281E5", **obj}},
    }]}


def test_aws_records_with_encoded_keys() -> None:
    (event,) = parse_body(json.dumps(aws_body("my+photos/caf%C3%A9+%2B+1%25.jpg")).encode()).events
    assert event.bucket == "uploads"
    assert event.key == "my photos/café + 1%.jpg"
    assert event.event_name == "s3:ObjectCreated:Put"
    assert (event.size, event.etag, event.sequencer) == (42, "0123abcd", "0055AED6DCD90281E5")


def test_minio_body_with_metadata() -> None:
    body = {
        "EventName": "s3:ObjectCreated:Put", "Key": "uploads/a.jpg",
        "Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "uploads"}, "object": {
            "key": "a.jpg", "size": 5, "eTag": "\"abc\"", "contentType": "image/jpeg", "versionId": "v1",
            "userMetadata": {"X-Amz-Meta-Fileproc-Pipeline": "thumbnails", "content-type": "image/jpeg"}}}}],
    }
    (event,) = parse_body(body).events
    assert (event.etag, event.version_id, event.content_type) == ("abc", "v1", "image/jpeg")
    assert event.metadata == {"fileproc-pipeline": "thumbnails"}
    assert event.version == "v1"


@pytest.mark.parametrize("body", [
    {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "uploads"},
    {"Service": "S3", "Event": "s3:TestEvent", "Time": "2026-11-26T10:00:00Z", "Bucket": "Test-Bucket"},
])
def test_test_events(body: dict[str, str]) -> None:
    parsed = parse_body(body)
    assert parsed.test and parsed.events == []


def test_a_bad_record_is_reported_and_the_good_ones_kept() -> None:
    body = aws_body("good.jpg")
    body["Records"].append({"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}})  # type: ignore[attr-defined]
    parsed = parse_body(body)
    assert [e.key for e in parsed.events] == ["good.jpg"]
    assert parsed.rejected == ["Records[1]: record has no bucket name or object key"]


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"hello": "world"}', "no 'Records'"),
    (b'{"Records": [{"eventName": "x"}]}', "no 's3'"),
])
def test_unreadable_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(BadNotification, match=reason):
        parse_body(body)


def test_record_round_trip_is_lambda_shaped() -> None:
    (event,) = parse_body(aws_body("my+photos/a%2Bb.jpg")).events
    record = event.to_record()
    assert record["s3"]["object"]["key"] == "my+photos/a%2Bb.jpg"
    assert record["eventName"] == "ObjectCreated:Put"
    assert parse_body({"Records": [record]}).events[0].key == event.key


def test_raw_keys_are_taken_as_they_are() -> None:
    (event,) = parse_body(aws_body("plus+sign/100%25 a+b.jpg"), raw_keys=True).events
    assert event.key == "plus+sign/100%25 a+b.jpg"


@pytest.mark.parametrize(("key", "reason"), [
    ("a/../b.jpg", "'..' segment"),
    ("./b.jpg", "'.' or '..' segment"),
    ("a//b.jpg", "empty, '.' or '..' segment"),
    ("/etc/passwd", "absolute path"),
    ("nul%00.jpg", "NUL"),
    ("k" * 1025, "longer than 1024 bytes"),
])
def test_impossible_keys_are_refused_with_the_reason(key: str, reason: str) -> None:
    parsed = parse_body(aws_body(key))  # the only record refused: answered, not an unreadable body
    assert parsed.events == []
    (refused,) = parsed.rejected
    assert refused.startswith("Records[0]: ") and reason in refused


def test_a_folder_placeholder_is_not_refused() -> None:
    (event,) = parse_body(aws_body("photos/")).events  # no pipeline takes it, but it is no error
    assert event.key == "photos/"


def test_more_records_than_allowed_are_refused_as_a_whole() -> None:
    body = aws_body("a.jpg")
    body["Records"] = body["Records"] * 3  # type: ignore[operator]
    with pytest.raises(TooManyRecords, match="3 records in one body; at most 2"):
        parse_body(body, max_records=2)
    assert len(parse_body(body, max_records=3).events) == 3


def test_a_body_nested_too_deep_is_a_reason_from_any_source_not_a_recursion_error() -> None:
    deep = b'{"Records": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(BadNotification, match="JSON nested deeper than 100 levels"):
        parse_body(deep, source="amqp")
