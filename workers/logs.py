"""The built-in ``logs`` function: parse a log as it arrives, summarise it, keep what a filter asks for.

Params (``context.params``)::

    format = "auto"          # auto | combined | common | json | syslog3164 | syslog5424
    filter = "status >= 500" # optional: records written to records.jsonl / records.csv
    records_format = "jsonl" # jsonl | csv
    stream = ""              # the log stream for rolling totals; default: the key's folder
    top = 10                 # entries in each "top" list of the summary
    bad_line_samples = 5     # bad lines kept (each cut to 300 characters)

The object is read line by line (gzip-compressed ones too, recognised by
their bytes), so memory stays flat whatever its size. Lines that do not
parse are counted and a few kept, never fatal; a file in which no line parses
fails with ``InvalidInput``.

Outputs: ``summary.json`` (lines, bad lines, counts by status, method, path
and hour, bytes, top clients, error rate, p50/p95 response time when the log
has one) and, with a ``filter``, ``records.jsonl`` or ``records.csv``. The
step's result carries the summary under ``log_totals``: fileproc keeps it in
the state database, one row per file (an overwritten file replaces its row),
and ``fileproc logs-summary PREFIX`` adds up the files of a stream.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import Counter
from datetime import UTC, datetime
from itertools import islice
from typing import IO, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fileproc import Context, InvalidInput, function
from workers.logformats import (
    FORMATS,
    HTTP_CHUNK,
    FilterError,
    Histogram,
    TopCounter,
    compile_filter,
    detect,
    http_time,
    parser_for,
)

DETECT_LINES = 50
CHUNK_CHARS = 1 << 20  # what add_http_chunk takes at once
_NO_TIME = datetime.min.replace(tzinfo=UTC)  # a time stamp that does not parse
CSV_FIELDS = ("time", "client", "method", "path", "status", "bytes", "response_ms", "host", "app", "level",
              "message")


class LogsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["auto", "combined", "common", "json", "syslog3164", "syslog5424"] = "auto"
    filter: str = Field("", description="Records to keep, e.g. `status >= 500`.")
    records_format: Literal["jsonl", "csv"] = "jsonl"
    stream: str = Field("", description="Rolling totals' stream; default: the key's folder.")
    top: int = Field(10, ge=1, le=1000)
    bad_line_samples: int = Field(5, ge=0, le=100)

    @field_validator("filter")
    @classmethod
    def _filter_parses(cls, value: str) -> str:
        if value.strip():
            compile_filter(value)  # a FilterError (ValueError) names the problem at start
        return value


class Summary:
    """What one pass over a log adds up, in bounded memory."""

    def __init__(self) -> None:
        self.lines = self.bad = self.records = self.bytes = self.errors = self.matched = 0
        self.status: Counter[str] = Counter()
        self.method = TopCounter(100)
        self.path = TopCounter(1000)
        self.client = TopCounter(1000)
        self.hour = TopCounter(24 * 400)
        self.level: Counter[str] = Counter()
        self.response = Histogram()
        self.samples: list[str] = []
        self.first: datetime | None = None
        self.last: datetime | None = None
        self._times: dict[str, datetime] = {}  # parsed time stamps, for add_http_chunk

    def add(self, record: dict[str, Any]) -> None:
        self.records += 1
        status = record.get("status")
        if isinstance(status, int):
            self.status[str(status)] += 1
            if status >= 500:
                self.errors += 1
        elif isinstance(record.get("severity"), int) and record["severity"] <= 3:
            self.errors += 1  # syslog: err and worse
        if record.get("method"):
            self.method.add(str(record["method"]))
        if record.get("path"):
            self.path.add(str(record["path"]).split("?", 1)[0])
        if record.get("client"):
            self.client.add(str(record["client"]))
        if record.get("level"):
            self.level[str(record["level"]).lower()] += 1
        size = record.get("bytes")
        if isinstance(size, int):
            self.bytes += size
        if isinstance(record.get("response_ms"), float):
            self.response.add(record["response_ms"])
        time = record.get("time")
        if isinstance(time, datetime):
            self.hour.add(time.strftime("%Y-%m-%dT%H:00"))
            self.first = time if self.first is None or time < self.first else self.first
            self.last = time if self.last is None or time > self.last else self.last

    def add_http_chunk(self, text: str, name: str, bad_line_samples: int) -> None:
        """Every line of ``text`` (whole lines of a ``combined`` or ``common`` log) at once.

        What :meth:`add` does line by line, with the parsing and the counting
        done in C (``re.findall``, ``zip``, ``Counter``): Python code runs once
        per *distinct* client, path, time or response time of the chunk, not
        once per line. Gives the same summary as parsing each line.
        """
        rows = HTTP_CHUNK[name].findall(text)
        if not rows:
            return
        clients, times, methods, paths, statuses, sizes, seconds, bads = zip(*rows, strict=True)
        method_counts = Counter(methods)
        unparsed = method_counts.pop("", 0)  # bad lines and blank ones
        bad = list(filter(str.strip, bads)) if unparsed else []
        self.lines += len(rows) - unparsed + len(bad)
        self.bad += len(bad)
        self.samples += [line[:300] for line in bad[:max(0, bad_line_samples - len(self.samples))]]
        self.records += len(rows) - unparsed
        if len(rows) == unparsed:
            return
        self.method.update(methods, less_by=unparsed)
        status_counts = Counter(statuses)
        status_counts.pop("", None)
        for status, count in status_counts.items():
            self.status[str(int(status))] += count
            if int(status) >= 500:
                self.errors += count
        self.bytes += sum(map(int, filter(None, sizes)))
        self.path.update(paths, less_by=unparsed)  # the lines that did not parse have "" (a parsed path may too)
        self.client.update(clients, less_by=unparsed)
        for value, count in Counter(seconds).items():
            if value:
                self.response.add(float(value) * 1000, count)
        for stamp, count in Counter(times).items():
            time = self._times.get(stamp) if stamp else None
            if stamp and time is None:
                time = self._times[stamp] = http_time(stamp) or _NO_TIME
                if len(self._times) > 10_000:  # bounded: a log's times mostly repeat within a chunk
                    self._times.clear()
            if time is None or time is _NO_TIME:
                continue
            self.hour.add(time.strftime("%Y-%m-%dT%H:00"), count)
            self.first = time if self.first is None or time < self.first else self.first
            self.last = time if self.last is None or time > self.last else self.last

    def to_json(self, top: int) -> dict[str, Any]:
        return {
            "lines": self.lines, "records": self.records, "bad_lines": self.bad, "bad_line_samples": self.samples,
            "bytes": self.bytes, "errors": self.errors,
            "error_rate": round(self.errors / self.records, 6) if self.records else 0.0,
            "status": dict(sorted(self.status.items())), "method": self.method.top(top),
            "path": self.path.top(top), "top_clients": self.client.top(top),
            "hour": dict(sorted(self.hour.counts.items())), "level": dict(self.level),
            "response_ms": {"p50": self.response.percentile(0.5), "p95": self.response.percentile(0.95),
                            "count": self.response.count},
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
            "matched": self.matched,
            # Top lists past their capacity (see TopCounter): each count there may be this much too low.
            "approximate": {name: counter.error for name, counter in (
                ("method", self.method), ("path", self.path), ("top_clients", self.client), ("hour", self.hour))
                if not counter.exact},
        }


@function("logs", timeout=3600, memory_mb=512, retries=2, params=LogsParams)
def handler(event: dict[str, Any], context: Context) -> dict[str, Any]:
    params = LogsParams.model_validate(context.params)
    keep = compile_filter(params.filter) if params.filter.strip() else None
    info = context.input.info
    year = (info.last_modified or datetime.now(UTC)).year  # RFC 3164 times carry no year
    summary = Summary()
    records_file = None
    records_path = context.scratch_dir / f"records.{params.records_format}"
    with context.input.open() as raw:
        text = _text(raw)
        head = [line.rstrip("\n") for line in islice(text, DETECT_LINES)]
        name = params.format if params.format != "auto" else detect([x for x in head if x.strip()], year)
        if name is None:
            if not any(x.strip() for x in head):
                raise InvalidInput("the log is empty")
            raise InvalidInput(f"no line is in a known log format ({', '.join(FORMATS)}): {head[0][:200]!r}")
        if keep is None and name in HTTP_CHUNK:  # a summary of an access log: whole chunks at once
            for chunk in _chunks(head, text):
                summary.add_http_chunk(chunk, name, params.bad_line_samples)
        else:
            records_file = records_path.open("w", encoding="utf-8", newline="") if keep is not None else None
            try:
                _each_line(summary, parser_for(name, year), _chain(head, text), keep, params.bad_line_samples,
                           _record_writer(records_file, params.records_format) if records_file else None)
            finally:
                if records_file is not None:
                    records_file.close()
    if summary.records == 0:
        raise InvalidInput(f"no line of the log parses as {name} ({summary.bad} bad lines)")
    result = summary.to_json(params.top)
    result["format"] = name
    context.output.put("summary.json", json.dumps(result, indent=2).encode(), content_type="application/json")
    if records_file is not None:
        content_type = "text/csv" if params.records_format == "csv" else "application/x-ndjson"
        context.output.put(records_path.name, records_path, content_type=content_type)
    stream = params.stream or f"{info.bucket}/{info.key.rpartition('/')[0]}/".replace("//", "/")
    totals = {key: result[key] for key in ("lines", "records", "bad_lines", "bytes", "errors", "status", "first",
                                           "last")}
    totals["response_hist"] = summary.response.to_json()
    return {"format": name, "lines": summary.lines, "bad_lines": summary.bad, "matched": summary.matched,
            "log_totals": {"stream": stream, "bucket": info.bucket, "key": info.key, "version": info.etag, **totals}}


def _each_line(summary: Summary, parse: Any, lines: Any, keep: Any, bad_line_samples: int, writer: Any) -> None:
    for line in lines:
        if not line.strip():
            continue
        summary.lines += 1
        record = parse(line)
        if record is None:
            summary.bad += 1
            if len(summary.samples) < bad_line_samples:
                summary.samples.append(line[:300])
            continue
        summary.add(record)
        if keep is not None and writer is not None and keep(record):
            summary.matched += 1
            writer(record)


def _text(raw: IO[bytes]) -> io.TextIOWrapper:
    """``raw`` as text, gunzipped if its bytes say gzip; bad UTF-8 replaced."""
    # A file or an S3 body is a BufferedReader already; anything else (a BytesIO) is read through one, by its
    # readinto (which typing.IO does not declare), for the look-ahead.
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(cast(io.RawIOBase, raw))
    gzipped = buffered.peek(2)[:2] == b"\x1f\x8b"
    stream: gzip.GzipFile | io.BufferedReader = gzip.GzipFile(fileobj=buffered) if gzipped else buffered
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None)


def _chain(head: list[str], rest: io.TextIOWrapper) -> Any:
    yield from head
    for line in rest:
        yield line.rstrip("\n")


def _chunks(head: list[str], rest: io.TextIOWrapper) -> Any:
    """Whole lines, about CHUNK_CHARS at a time (a line is never cut)."""
    carry = "".join(line + "\n" for line in head)
    while True:
        block = rest.read(CHUNK_CHARS)
        if not block:
            if carry:
                yield carry
            return
        cut = block.rfind("\n")
        if cut < 0:
            carry += block
            continue
        yield carry + block[:cut + 1]
        carry = block[cut + 1:]


def _record_writer(handle: IO[str], kind: str) -> Any:
    if kind == "csv":
        writer = csv.DictWriter(handle, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        return lambda record: writer.writerow({k: _plain(record.get(k)) for k in CSV_FIELDS})
    return lambda record: handle.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


__all__ = ["FilterError", "LogsParams", "handler"]
