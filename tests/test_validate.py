"""The `validate` function: real type from the bytes, sizes, decoding, schemas, checksums, and what a failure does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fileproc import InvalidInput
from fileproc.storage.local import LocalStorage
from tests.helpers import image_bytes, invocation, read_object
from tests.procs import Process, settled, wait_for, wait_healthy, write_config
from tests.servers import free_port
from workers import validate


def run(tmp_path: Path, key: str, data: bytes, params: dict[str, Any], metadata: dict[str, str] | None = None,
        ) -> tuple[dict[str, Any], LocalStorage, Any]:
    storage = LocalStorage(tmp_path / "buckets")
    storage.ensure_bucket("inbox")
    storage.put("inbox", key, data, metadata=metadata)
    event, context = invocation(storage, "inbox", key, tmp_path / "scratch", function_name="validate",
                                params=validate.ValidateParams(**params).model_dump(mode="json"))
    return validate.handler(event, context), storage, context


def test_the_real_type_comes_from_the_bytes(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="its bytes are image/png, not one of application/pdf"):
        run(tmp_path, "invoice.pdf", image_bytes(20, 20, fmt="PNG"), {"allowed_types": ["application/pdf"]})
    report, _, _ = run(tmp_path, "cat.jpg", image_bytes(40, 30), {"allowed_types": ["image/*"]})
    assert report == {"valid": True, "type": "image/jpeg", "size": report["size"], "reasons": []}
    with pytest.raises(InvalidInput, match="the object is empty"):
        run(tmp_path, "empty.txt", b"", {})
    with pytest.raises(InvalidInput, match="more than 100"):
        run(tmp_path, "big.txt", b"x" * 101, {"max_size": 100})


def test_a_truncated_image_fails_its_decode_test(tmp_path: Path) -> None:
    data = image_bytes(300, 200, "red", "PNG")
    with pytest.raises(InvalidInput, match="the image does not decode"):
        run(tmp_path, "cut.png", data[: len(data) // 2], {"allowed_types": ["image/png"]})


def test_json_against_a_schema_and_csv_against_its_columns(tmp_path: Path) -> None:
    schema = {"type": "object", "required": ["id", "tags"],
              "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}}
    run(tmp_path, "ok.json", json.dumps({"id": 1, "tags": ["a"]}).encode(), {"json_schema": schema})
    with pytest.raises(InvalidInput) as failed:
        run(tmp_path, "bad.json", json.dumps({"id": "one", "tags": ["a", 2]}).encode(), {"json_schema": schema})
    assert "at /id: 'one' is not of type 'integer'" in str(failed.value)
    assert "at /tags/1: 2 is not of type 'string'" in str(failed.value)
    with pytest.raises(InvalidInput, match="not valid JSON"):
        run(tmp_path, "broken.json", b'{"id": ', {"json_schema": schema})

    run(tmp_path, "ok.csv", b"id,name,port\n1,Aurora,Bergen\n", {"csv_columns": ["id", "name"]})
    with pytest.raises(InvalidInput, match="CSV columns missing: name"):
        run(tmp_path, "bad.csv", b"id,title\n1,x\n", {"csv_columns": ["id", "name"]})
    with pytest.raises(InvalidInput, match="CSV line 3 has 2 fields, the header 3"):
        run(tmp_path, "ragged.csv", b"id,name,port\n1,a,b\n2,c\n", {"csv_columns": ["id"]})


def test_checksum_against_the_metadata(tmp_path: Path) -> None:
    data = b"payload"
    good = hashlib.sha256(data).hexdigest()
    run(tmp_path, "a.bin", data, {"checksum": "sha256"}, metadata={"sha256": good})
    with pytest.raises(InvalidInput, match="the metadata says"):
        run(tmp_path, "b.bin", data, {"checksum": "sha256"}, metadata={"sha256": "0" * 64})
    with pytest.raises(InvalidInput, match="no 'sha256' checksum"):
        run(tmp_path, "c.bin", data, {"checksum": "sha256"})


def test_failure_tags_or_quarantines_the_object(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"moved to jail/bad/fake\.pdf"):
        run(tmp_path, "fake.pdf", image_bytes(20, 20, fmt="PNG"),
            {"allowed_types": ["application/pdf"], "on_failure": "quarantine", "quarantine_bucket": "jail",
             "quarantine_prefix": "bad/"})
    storage = LocalStorage(tmp_path / "buckets")
    assert not list(storage.list("inbox"))  # moved away
    moved = storage.head("jail", "bad/fake.pdf")
    assert "image/png" in moved.metadata["fileproc-validation"]
    report = json.loads(read_object(storage, "out", "validate/fake.pdf/validation.json"))
    assert report["valid"] is False and report["quarantined"] == "jail/bad/fake.pdf"

    with pytest.raises(InvalidInput):
        run(tmp_path, "tagged.pdf", image_bytes(20, 20, fmt="PNG"), {"allowed_types": ["application/pdf"]})
    assert storage.head("inbox", "tagged.pdf").size > 0  # left in place
    assert json.loads(read_object(storage, "out", "validate/tagged.pdf/validation.json"))["type"] == "image/png"


def test_a_failed_validation_stops_the_job_before_later_steps(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "fileproc.toml", {
        "data_dir": str(tmp_path / "data"), "api": {"port": port},
        "pipelines": [{"name": "checked", "match": {"bucket": "inbox"},
                       "steps": [{"function": "validate", "params": {"allowed_types": ["text/*", "application/json"],
                                                                      "on_failure": "quarantine",
                                                                      "quarantine_prefix": "quarantine/"}},
                                 {"function": "index"}],
                       "output": {"bucket": "results", "key": "{key}/{name}"}}],
    })
    server = Process(config, ["serve"], tmp_path / "serve.log")
    inbox = tmp_path / "data" / "buckets" / "inbox"
    results = tmp_path / "data" / "buckets" / "results"
    try:
        wait_healthy(port, server)
        wait_for(inbox.is_dir, 10, "the inbox folder", server)
        (inbox / "notes.txt").write_text("tide tables")
        (inbox / "photo.json").write_bytes(image_bytes(20, 20, fmt="PNG"))
        found = {j["key"]: j for j in wait_for(settled(config, 2), 60, "2 finished jobs", server)}
        assert found["notes.txt"]["status"] == "succeeded"
        assert (results / "notes.txt" / "text.json").exists()  # the later step ran
        bad = found["photo.json"]
        assert bad["status"] == "failed" and "its bytes are image/png" in bad["error"]
        assert not (results / "photo.json" / "text.json").exists()  # the later step did not
        assert (inbox / "quarantine" / "photo.json").exists() and not (inbox / "photo.json").exists()
    finally:
        assert server.stop() == 0, server.tail()
