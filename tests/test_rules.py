"""Pipeline matching and output keys: which objects go where."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fileproc.events import ObjectEvent
from fileproc.rules import Pipeline, match, render_key


def pipeline(name: str = "p", **match_fields: object) -> Pipeline:
    return Pipeline.model_validate({
        "name": name,
        "match": {"bucket": "uploads", **match_fields},
        "steps": [{"function": "thumbnail"}],
        "output": {"bucket": "derived"},
    })


def event(key: str, bucket: str = "uploads", name: str = "s3:ObjectCreated:Put", **kw: object) -> ObjectEvent:
    return ObjectEvent(bucket=bucket, key=key, event_name=name, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "key", "expected"), [
    ({}, "a.jpg", True),
    ({"prefix": "photos/"}, "photos/a.jpg", True),
    ({"prefix": "photos/"}, "docs/a.jpg", False),
    ({"suffix": [".jpg", ".png"]}, "a.PNG", True),
    ({"suffix": ".jpg"}, "a.jpg.txt", False),
    ({"glob": "photos/*.jpg"}, "photos/a.jpg", True),
    ({"glob": "photos/*.jpg"}, "photos/2026/a.jpg", False),
    ({"glob": "photos/**/*.jpg"}, "photos/2026/11/a.jpg", True),
    ({"glob": "photos/**/*.jpg"}, "photos/a.jpg", True),
    ({"max_size": 100}, "a.jpg", False),
])
def test_match_conditions(fields: dict[str, object], key: str, expected: bool) -> None:
    assert bool(match([pipeline(**fields)], event(key, size=1000))) is expected


def test_event_type_wildcards() -> None:
    created = pipeline(events=["s3:ObjectCreated:*"])
    removed = pipeline("r", events="s3:ObjectRemoved:*")
    assert match([created, removed], event("a.jpg", name="ObjectCreated:CompleteMultipartUpload")) == [created]
    assert match([created, removed], event("a.jpg", name="s3:ObjectRemoved:Delete")) == [removed]


def test_bucket_glob_and_other_buckets() -> None:
    p = pipeline()
    p.match.bucket = "up*"
    assert match([p], event("a.jpg", bucket="uploads-eu"))
    assert not match([p], event("a.jpg", bucket="derived"))


def test_folder_placeholders_are_ignored() -> None:
    assert match([pipeline()], event("photos/")) == []


def test_an_object_never_goes_back_through_the_pipeline_that_wrote_it() -> None:
    mine, other = pipeline("mine"), pipeline("other")
    written = event("a.jpg", metadata={"fileproc-pipeline": "mine"})
    assert match([mine, other], written) == [other]


def test_output_key_template() -> None:
    assert render_key("{pipeline}/{key}/{name}", pipeline="t", bucket="b", key="a/b c.jpg", name="x.webp") \
        == "t/a/b c.jpg/x.webp"
    assert render_key("{dirname}/{stem}-{name}", pipeline="t", bucket="b", key="top.jpg", name="256.webp") \
        == "top-256.webp"


def test_bad_templates_and_events_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="unknown placeholder"):
        Pipeline.model_validate({"name": "p", "match": {"bucket": "b"}, "steps": [{"function": "f"}],
                                 "output": {"bucket": "o", "key": "{nope}/{name}"}})
    with pytest.raises(ValidationError, match="must contain"):
        Pipeline.model_validate({"name": "p", "match": {"bucket": "b"}, "steps": [{"function": "f"}],
                                 "output": {"bucket": "o", "key": "{key}"}})
    with pytest.raises(ValidationError, match="s3:ObjectCreated"):
        pipeline(events=["ObjectCreated"])
