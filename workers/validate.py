"""The built-in ``validate`` function: is this object what the pipeline accepts?

Params (``context.params``), every check optional::

    allowed_types = ["image/*", "application/pdf"]  # the REAL type, from the bytes
    min_size = 1                                     # bytes; the default refuses empty files
    max_size = 10_000_000
    decode = true             # images decoded in full (Pillow), videos too (ffmpeg)
    json_schema = {...}       # a JSON Schema the (JSON) object must satisfy
    csv_columns = ["id", "name"]   # a CSV's header must hold these columns, every row as wide
    checksum = "sha256"       # compare with the object's metadata `sha256` (or checksum_key)
    on_failure = "tag"        # tag | quarantine
    quarantine_bucket = "quarantine"   # default: the source bucket
    quarantine_prefix = "quarantine/"

The real type comes from the first bytes (the ``filetype`` library's
signatures); a file without a binary signature that decodes as UTF-8 is
text, and its name then says which text type (``.json``, ``.csv``, ...). A
PNG named ``.pdf`` is ``image/png``.

On failure the step raises ``InvalidInput`` with every reason found, so the
job fails before its later steps and the reasons are its error. Before that
the object is handled as ``on_failure`` says: ``tag`` leaves it in place and
writes the report ``validation.json`` under the pipeline's output location;
``quarantine`` moves it to ``quarantine_bucket/quarantine_prefix + key``
(with the reasons in its metadata) and writes the same report. On success
the step returns the report and the job goes on.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

import filetype
from pydantic import BaseModel, ConfigDict, Field

from fileproc import Context, InvalidInput, function

PROVENANCE_PIPELINE = "fileproc-pipeline"
"""Metadata naming the pipeline that wrote an object: a quarantined copy never goes through it again."""

_TEXT_TYPES = {".json": "application/json", ".csv": "text/csv", ".tsv": "text/tab-separated-values",
               ".md": "text/markdown", ".html": "text/html", ".htm": "text/html", ".xml": "application/xml",
               ".txt": "text/plain", ".log": "text/plain"}


class ValidateParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_types: list[str] = Field(default_factory=list, description="MIME types or globs; empty: any.")
    min_size: int = Field(1, ge=0)
    max_size: int | None = Field(None, ge=0)
    decode: bool = Field(True, description="Decode images and videos in full.")
    json_schema: dict[str, Any] | None = None
    csv_columns: list[str] = Field(default_factory=list)
    checksum: Literal["md5", "sha1", "sha256"] | None = None
    checksum_key: str | None = Field(None, description="Metadata key holding the checksum; default: the algorithm.")
    on_failure: Literal["tag", "quarantine"] = "tag"
    quarantine_bucket: str | None = None
    quarantine_prefix: str = "quarantine/"


@function("validate", timeout=300, memory_mb=1024, retries=2, params=ValidateParams)
def handler(event: dict[str, Any], context: Context) -> dict[str, Any]:
    params = ValidateParams.model_validate(context.params)
    info = context.input.info
    reasons: list[str] = []
    if info.size < params.min_size:
        reasons.append("the object is empty" if info.size == 0 else f"{info.size} bytes, fewer than {params.min_size}")
    if params.max_size is not None and info.size > params.max_size:
        reasons.append(f"{info.size} bytes, more than {params.max_size}")
    with context.input.open() as stream:
        head = stream.read(8192)
    real = real_type(head, info.key)
    if params.allowed_types and not any(fnmatch.fnmatchcase(real, p) for p in params.allowed_types):
        reasons.append(f"its bytes are {real}, not one of {', '.join(params.allowed_types)}")
    if not reasons:  # the deeper checks only make sense on the right kind of file
        reasons += _content_checks(params, real, context)
    report = {"valid": not reasons, "type": real, "size": info.size, "reasons": reasons}
    if not reasons:
        return report
    where = _handle_failure(params, context, report)
    raise InvalidInput(f"validation failed: {'; '.join(reasons)}{where}")


def real_type(head: bytes, key: str) -> str:
    """The MIME type the bytes say (``application/octet-stream`` when they say nothing known)."""
    kind = filetype.guess(head)
    if kind is not None:
        return str(kind.mime)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sample
            return "application/octet-stream"
    if b"\x00" in head:
        return "application/octet-stream"
    return _TEXT_TYPES.get(Path(key).suffix.lower(), "text/plain")


def _content_checks(params: ValidateParams, real: str, context: Context) -> list[str]:
    reasons: list[str] = []
    if params.decode and real.startswith("image/"):
        reasons += _decode_image(context)
    if params.decode and real.startswith("video/"):
        reasons += _decode_video(context)
    if params.json_schema is not None:
        reasons += _check_json(params.json_schema, context)
    if params.csv_columns:
        reasons += _check_csv(params.csv_columns, context)
    if params.checksum:
        reasons += _check_checksum(params.checksum, params.checksum_key or params.checksum, context)
    return reasons


def _decode_image(context: Context) -> list[str]:
    from PIL import Image

    try:
        with Image.open(context.input.path) as image:
            image.load()
    except Exception as exc:  # Pillow raises many kinds for a broken file
        return [f"the image does not decode: {exc}"]
    return []


def _decode_video(context: Context) -> list[str]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return ["cannot test the video: ffmpeg is not installed on this worker"]
    done = subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-threads", "1", "-i", str(context.input.path),
                           "-f", "null", "-"], capture_output=True, text=True,
                          timeout=max(1.0, context.get_remaining_time_in_millis() / 1000 - 1))
    problems = done.stderr.strip().splitlines()
    if done.returncode != 0 or problems:
        return [f"the video does not decode: {(problems or ['ffmpeg failed'])[-1][:300]}"]
    return []


def _check_json(schema: dict[str, Any], context: Context) -> list[str]:
    import jsonschema

    try:
        with context.input.open() as stream:
            data = json.load(io.TextIOWrapper(stream, encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"not valid JSON: {exc}"]
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    return [f"JSON schema: at /{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in errors[:10]]


def _check_csv(columns: list[str], context: Context) -> list[str]:
    with context.input.open() as stream:
        reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline=""))
        try:
            header = next(reader, None)
            if header is None:
                return ["the CSV file has no header"]
            missing = [c for c in columns if c not in header]
            if missing:
                return [f"CSV columns missing: {', '.join(missing)} (header: {', '.join(header)})"]
            for number, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    return [f"CSV line {number} has {len(row)} fields, the header {len(header)}"]
        except (csv.Error, UnicodeDecodeError) as exc:
            return [f"not a readable CSV file: {exc}"]
    return []


def _check_checksum(algorithm: str, key: str, context: Context) -> list[str]:
    expected = context.input.info.metadata.get(key, "").strip().lower()
    if not expected:
        return [f"no {key!r} checksum in the object's metadata"]
    digest = hashlib.new(algorithm)
    with context.input.open() as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        return [f"{algorithm} is {digest.hexdigest()}, the metadata says {expected}"]
    return []


def _handle_failure(params: ValidateParams, context: Context, report: dict[str, Any]) -> str:
    """Tag or quarantine the object; what to add to the failure's reason."""
    where = ""
    if params.on_failure == "quarantine":
        bucket = params.quarantine_bucket or context.input.bucket
        key = params.quarantine_prefix + context.input.key
        metadata = {**context.input.info.metadata, PROVENANCE_PIPELINE: context.pipeline,
                    "fileproc-validation": "; ".join(report["reasons"])[:1000].encode("ascii", "replace").decode()}
        context.storage.ensure_bucket(bucket)
        with context.input.open() as stream:
            context.storage.put(bucket, key, stream, content_type=context.input.content_type, metadata=metadata)
        context.storage.delete(context.input.bucket, context.input.key)
        report["quarantined"] = f"{bucket}/{key}"
        where = f" (moved to {bucket}/{key})"
    context.output.put("validation.json", json.dumps(report, indent=2).encode(), content_type="application/json")
    return where
